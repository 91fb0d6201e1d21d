"""The one place an InternVLProcessor is made: GOT-OCR2 tiling + tokenizer + the chat template of the
conversation template the model is trained with. Used for every run's final/ and for converted checkpoints,
so `AutoProcessor.from_pretrained(dir)` and `processor.apply_chat_template` work on both.

Its image processor computes the training pixels: transformers' PIL backend (`GotOcr2ImageProcessorPil`) for
`data.resize_backend=pil`, the default and InternVL's own kernel, its torchvision backend
(`GotOcr2ImageProcessor`) for `torch`. The two differ by up to ~14 uint8 levels on photographs (docs/data.md).
transformers does not store which backend a processor was saved with (`AutoProcessor.from_pretrained` takes
torchvision whenever it is installed), so the backend is written into the image processor's config (in
processor_config.json) as `resize_backend`, and `from_pretrained_dir` (our loaders) honours it; plain transformers needs
`AutoImageProcessor.from_pretrained(dir, backend="pil")` (docs/inference.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from internvl_exp.data.images import normalization
from internvl_exp.data.templates import TEMPLATES
from internvl_exp.models.chat_template import chat_template
from internvl_exp.redact import scrub

# data.resize_backend -> transformers' image-processor backend with the same pixels.
HF_BACKENDS = {"pil": "pil", "torch": "torchvision"}


def image_processor_for(resize_backend: str, **kwargs: Any):
    """A GOT-OCR2 image processor whose pixels are those of `resize_backend`, which it records (saved with its
    config as `resize_backend`)."""
    from transformers import GotOcr2ImageProcessor, GotOcr2ImageProcessorPil

    if resize_backend not in HF_BACKENDS:
        raise ValueError(f"unknown resize backend {resize_backend!r}; choose one of {list(HF_BACKENDS)}")
    processor = (GotOcr2ImageProcessorPil if resize_backend == "pil" else GotOcr2ImageProcessor)(**kwargs)
    processor.resize_backend = resize_backend
    return processor


def from_pretrained_dir(path: str | Path, resize_backend: str | None = None):
    """`AutoProcessor.from_pretrained(path)` with the image processor of the backend that made the training
    pixels: `resize_backend`, else the one the directory records, else transformers' default (a directory
    saved by something else)."""
    from transformers import AutoImageProcessor, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(path))
    backend = resize_backend or getattr(processor.image_processor, "resize_backend", None)
    if backend is not None:
        if backend not in HF_BACKENDS:
            raise ValueError(f"{path}: the image processor's resize_backend {backend!r} is not one of {list(HF_BACKENDS)}")
        processor.image_processor = AutoImageProcessor.from_pretrained(str(path), backend=HF_BACKENDS[backend])
        processor.image_processor.resize_backend = backend
    return processor


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
    resize_backend: str = "pil",
):
    """An InternVLProcessor; `template` None (a template we do not know) leaves it without a chat template.
    `resize_backend`: data.resize_backend, the kernel whose pixels the image processor reproduces."""
    from transformers import InternVLProcessor, InternVLVideoProcessor

    mean, std = (list(v) for v in normalization(normalize_type))
    size = {"height": image_size, "width": image_size}
    image_processor = image_processor_for(
        resize_backend,
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
    if template not in TEMPLATES:
        return None
    # The template is written into final/: a secret in data.system_message must not be (redact.py).
    return chat_template(template, system_message=None if system_message is None else scrub(system_message))
