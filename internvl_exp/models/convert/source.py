"""Reading an original OpenGVLab checkpoint directory without loading any weights.

Only config.json and the safetensors headers are read here (a few KB per shard), so this is cheap at 150 GB.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from internvl_exp.errors import UserError

ORIGINAL_MODEL_TYPE = "internvl_chat"
# safetensors dtype names -> torch dtype names (the ones the config's `dtype` field takes).
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class ConversionError(UserError):
    """The source directory cannot be converted; the message names the file or key and what to do."""


@dataclass(frozen=True)
class TensorInfo:
    shard: int  # index into SourceCheckpoint.shards
    shape: tuple[int, ...]
    dtype: str  # safetensors name, e.g. "BF16"


@dataclass
class SourceCheckpoint:
    path: Path
    config: dict[str, Any]
    shards: list[Path]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def largest_shard_bytes(self) -> int:
        return max(p.stat().st_size for p in self.shards)


def read_config(path: Path) -> dict[str, Any]:
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise ConversionError(f"{path}: no such directory (expected an InternVL checkpoint directory)")
    if not cfg_file.is_file():
        raise ConversionError(f"{cfg_file}: missing; an InternVL checkpoint directory holds config.json and *.safetensors")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{cfg_file}: not valid JSON ({e})") from None


def is_original_layout(path: Path) -> bool:
    """True when `path` holds an OpenGVLab original checkpoint (config.json with model_type internvl_chat)."""
    try:
        return read_config(Path(path)).get("model_type") == ORIGINAL_MODEL_TYPE
    except ConversionError:
        return False


def read_header(shard: Path) -> tuple[bytes, dict[str, Any]]:
    """(raw header bytes, parsed header) of a safetensors file: 8-byte little-endian length, then JSON."""
    with open(shard, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ConversionError(f"{shard}: truncated safetensors file (no header); re-download it")
        (n,) = struct.unpack("<Q", head)
        raw = f.read(n)
    if len(raw) != n:
        raise ConversionError(f"{shard}: truncated safetensors header; re-download it")
    try:
        return raw, json.loads(raw)
    except json.JSONDecodeError:
        raise ConversionError(f"{shard}: corrupt safetensors header; re-download it") from None


def shard_files(path: Path) -> list[Path]:
    """The weight shards, in the order the index lists them (or the single model.safetensors)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ConversionError(f"{index}: lists shard(s) {missing[:3]} that are not in {path}; the download is incomplete")
        return [path / n for n in names]
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        bins = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (found {bins[0]}: PyTorch .bin weights are not supported; download the safetensors files)" if bins else ""
        raise ConversionError(f"{path}: no *.safetensors weights{hint}")
    return shards


def open_source(path: Path) -> SourceCheckpoint:
    """Config + tensor directory (name -> shard, shape, dtype) of an original checkpoint; raises ConversionError."""
    path = Path(path)
    config = read_config(path)
    if config.get("model_type") != ORIGINAL_MODEL_TYPE:
        raise ConversionError(
            f"{path / 'config.json'}: model_type is {config.get('model_type')!r}, not {ORIGINAL_MODEL_TYPE!r}; "
            "this is not an original OpenGVLab InternVL checkpoint (a native 'internvl' checkpoint loads as is)"
        )
    for section in ("vision_config", "llm_config"):
        if not isinstance(config.get(section), dict):
            raise ConversionError(f"{path / 'config.json'}: has no {section!r} section; the file is incomplete")
    src = SourceCheckpoint(path=path, config=config, shards=shard_files(path))
    for i, shard in enumerate(src.shards):
        _, header = read_header(shard)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name in src.tensors:
                raise ConversionError(f"{shard}: tensor {name!r} is also in {src.shards[src.tensors[name].shard].name}")
            src.tensors[name] = TensorInfo(shard=i, shape=tuple(info["shape"]), dtype=info["dtype"])
    return src
