"""The processor written next to converted weights: GOT-OCR2 tiling + InternVLProcessor, so
`AutoProcessor.from_pretrained(dst)` works on the converted directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from internvl_exp.models.processor import make_processor


def write_processor(
    dst: Path,
    tokenizer: Any,
    *,
    image_size: int,
    min_dynamic_patch: int,
    max_dynamic_patch: int,
    image_seq_length: int,
    template: str | None,
) -> None:
    """Write preprocessor/processor configs (with the chat template of the original config's `template`, when
    it is one we know) and the tokenizer into dst. InternVL normalises with ImageNet statistics (model-zoo 0)."""
    make_processor(
        tokenizer,
        image_size=image_size,
        min_patches=min_dynamic_patch,
        max_patches=max_dynamic_patch,
        image_seq_length=image_seq_length,
        template=template,
        normalize_type="imagenet",
    ).save_pretrained(str(dst))
