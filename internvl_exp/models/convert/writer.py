"""Writing target tensors as safetensors shards + model.safetensors.index.json, a shard at a time.

Tensors are buffered until the shard reaches `max_shard_bytes`, then written and released, so the writer never
holds more than one output shard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"


class ShardWriter:
    def __init__(self, dst: Path, max_shard_bytes: int) -> None:
        self.dst = dst
        self.max_shard_bytes = max_shard_bytes
        self._buffer: dict[str, "torch.Tensor"] = {}
        self._buffer_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: "torch.Tensor") -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor.contiguous()
        self._buffer_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.dst / f"model-part-{len(self._written) + 1:05d}.safetensors"
        save_file(self._buffer, str(path), metadata={"format": "pt"})
        self._written.append((path, list(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def finish(self) -> list[Path]:
        """Write the last shard, give every shard its final `model-0000i-of-0000N` name and write the index."""
        if self._buffer or not self._written:
            self._flush()
        n = len(self._written)
        weight_map, final = {}, []
        for i, (path, names) in enumerate(self._written, start=1):
            target = self.dst / f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(path, target)
            final.append(target)
            weight_map.update({name: target.name for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dst / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return final
