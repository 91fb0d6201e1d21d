"""The processor written next to converted weights: GOT-OCR2 tiling + InternVLProcessor, so
`AutoProcessor.from_pretrained(dst)` works on the converted directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# InternVL normalises with ImageNet statistics (every release in scope, model-zoo section 0).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


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
    """Write preprocessor/processor configs and the tokenizer into dst.

    The chat template for `template` (the original config's `template` name, e.g. "internvl2_5") belongs here:
    pass `chat_template=internvl_exp.models.chat_template.chat_template(template)` to InternVLProcessor below.
    """
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    size = {"height": image_size, "width": image_size}
    image_processor = GotOcr2ImageProcessor(
        size=size,
        crop_to_patches=max_dynamic_patch > 1,
        min_patches=min_dynamic_patch,
        max_patches=max_dynamic_patch,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    )
    video_processor = InternVLVideoProcessor(size=size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=image_seq_length,
    )
    processor.save_pretrained(str(dst))
