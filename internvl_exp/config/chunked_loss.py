"""`trainer.chunked_loss` resolved, and the chunk size of the chunked loss (train/recipe/chunked_loss.py).

Light on purpose (the planner and config resolution import it): no torch import here.
"""

from __future__ import annotations

from typing import Any

from internvl_exp.errors import ConfigError

# One chunk's float32 logits are at most this many bytes (128 MiB: 221 tokens at vocab 151,674), the one
# [chunk x vocab] tensor the loss holds at a time (plus, for 16-bit logits, their 16-bit original briefly).
CHUNK_BYTES = 2**27
CHUNK_SETTINGS = ("auto", "true", "false")


def use_chunked_loss(setting: Any, model_name: str) -> bool:
    """Resolve `trainer.chunked_loss` (auto | true | false; a YAML boolean too) for a model preset.

    auto: on for every real preset (vocabularies of 92k-200k tokens, where the logits dominate the activation
    memory); off for `tiny` (vocab 671: one chunk, no memory to save, and slower there: docs/benchmarks.md)."""
    value = str(setting).strip().lower()
    if value not in CHUNK_SETTINGS:
        raise ConfigError(f"trainer.chunked_loss: {setting!r} is not one of auto, true, false")
    if value == "auto":
        return model_name != "tiny"
    return value == "true"


def chunk_rows_for(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per chunk: as many as keep one chunk's float32 logits under `chunk_bytes` (at least 16)."""
    return max(16, chunk_bytes // (4 * max(vocab, 1)))
