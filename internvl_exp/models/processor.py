"""The one place an InternVLProcessor is made: GOT-OCR2 tiling + tokenizer + the chat template of the
conversation template the model is trained with. Used for every run's final/ and for converted checkpoints,
so `AutoProcessor.from_pretrained(dir)` and `processor.apply_chat_template` work on both."""

from __future__ import annotations

from typing import Any

from internvl_exp.data.images import normalization


def make_processor(
    tokenizer: Any,
    *,
    image_size: int,
    min_patches: int,
    max_patches: int,
    image_seq_length: int,
    template: str | None,
    normalize_type: str = "imagenet",
    system_message: str | None = None,
):
    """An InternVLProcessor; `template` None (a template we do not know) leaves it without a chat template."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    mean, std = (list(v) for v in normalization(normalize_type))
    size = {"height": image_size, "width": image_size}
    image_processor = GotOcr2ImageProcessor(
        size=size,
        crop_to_patches=max_patches > 1,
        min_patches=min_patches,
        max_patches=max_patches,
        image_mean=mean,
        image_std=std,
        do_convert_rgb=True,
    )
    video_processor = InternVLVideoProcessor(size=size, image_mean=mean, image_std=std)
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=image_seq_length,
        chat_template=template_for(template, system_message),
    )


def template_for(template: str | None, system_message: str | None = None) -> str | None:
    """The Jinja chat template rendering `template`'s training prompt text (None for an unknown template)."""
    from internvl_exp.data.templates import TEMPLATES
    from internvl_exp.models.chat_template import chat_template

    from internvl_exp.redact import scrub

    if template not in TEMPLATES:
        return None
    # The template is written into final/: a secret in data.system_message must not be (redact.py).
    return chat_template(template, system_message=None if system_message is None else scrub(system_message))
