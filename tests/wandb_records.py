"""Read a wandb offline run file (`run-<id>.wandb`) back, for tests.

wandb no longer ships a Python reader for its record log, so this parses the framing itself: a 7-byte header
(":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks, each `<crc32:u32><length:u16><type:u8>` +
data (type 1 full, 2 first, 3 middle, 4 last; a block tail shorter than a chunk header is zero padding).
The concatenated chunks of a record are one `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32768
HEADER = 7


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb record log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += left
            continue
        pending += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_run(path: Path) -> dict[str, Any]:
    """{"run": RunRecord, "config": {key: value}, "history": [{key: value}], "summary": {key: value}}."""
    out: dict[str, Any] = {"run": None, "config": {}, "history": [], "summary": {}}

    def apply_config(cfg: Any) -> None:
        for item in cfg.update:
            out["config"][item.key] = json.loads(item.value_json)

    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
            apply_config(r.run.config)
        elif kind == "config":
            apply_config(r.config)
        elif kind == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            for i in r.summary.update:
                out["summary"][i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return out
