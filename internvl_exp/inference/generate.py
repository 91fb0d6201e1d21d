"""Prompting a loaded model exactly as it was trained: the saved chat template (models/chat_template.py) renders
the training template's text, the processor tiles each image and expands it into the image-token span."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from internvl_exp.data.images import to_rgb
from internvl_exp.data.templates import IMAGE_PLACEHOLDER, get_template, normalise_roles
from internvl_exp.errors import UserError


class MissingImageError(UserError):
    """An image given on the command line or in the data that is not there."""


@dataclass
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature <= 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens}


def open_images(paths: Sequence[str | Path]) -> list[Any]:
    from PIL import Image

    images = []
    for p in paths:
        if not Path(p).is_file():
            raise MissingImageError(f"{p}: no such image file")
        with Image.open(p) as im:
            images.append(to_rgb(im, copy=True))  # as training reads it: 16-bit grayscale scaled, not clipped
    return images


def user_turn(text: str, n_images: int) -> dict[str, str]:
    """A user message in the training format: images the text does not place itself go first, `<image>\\n` each
    (InternVL's convention for an image at the start of a turn)."""
    missing = n_images - text.count(IMAGE_PLACEHOLDER)
    if missing < 0:
        raise MissingImageError(f"the prompt has {text.count(IMAGE_PLACEHOLDER)} <image> marks but {n_images} image(s)")
    return {"role": "user", "content": (IMAGE_PLACEHOLDER + "\n") * missing + text}


def split_prompt(conversations: list[dict]) -> tuple[list[dict], str]:
    """(chat messages before the last gpt turn, that turn's text) of a training sample: the prompt to answer and
    its reference answer. Roles as the training data names them."""
    turns = normalise_roles(conversations)
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    messages = [{"role": roles[r], "content": v} for r, v in turns[:-1]]
    return messages, turns[-1][1]


def stop_token_ids(tokenizer: Any, template: str | None) -> list[int]:
    """EOS plus the template's end-of-turn token: generation ends where a trained answer ends."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if template:
        eot = tokenizer.convert_tokens_to_ids(get_template(template).end_of_turn)
        if eot is not None and eot != tokenizer.unk_token_id and eot not in ids:
            ids.append(eot)
    return ids


def prepare(processor: Any, conversations: Sequence[Sequence[dict]], images: Sequence[Sequence[Any]], device: str):
    """Batched inputs (left padded, so every row's answer starts at the same column) for generation."""
    tokenizer = processor.tokenizer
    texts = [processor.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False) for c in conversations]
    flat = [im for per in images for im in per]
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:  # restored: the tokenizer may be the training run's (eval during training), which pads right
        inputs = processor(text=texts, images=flat or None, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = padding_side
    inputs.pop("token_type_ids", None)
    return inputs.to(device), texts


def generate(loaded: Any, conversations: Sequence[Sequence[dict]], images: Sequence[Sequence[Any]],
             sampling: Sampling, streamer: Any = None, synced_gpus: bool = False) -> list[str]:
    """One answer per conversation (each ends with a user turn). `synced_gpus`: every process keeps running
    forwards until all have finished (ZeRO-3 during training's eval: train/recipe/evaluation.py)."""
    import torch

    model, processor = loaded.model, loaded.processor
    device = next(model.parameters()).device
    inputs, _ = prepare(processor, conversations, images, str(device))
    tokenizer = processor.tokenizer
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    with torch.no_grad():
        out = model.generate(
            **inputs, **sampling.generate_kwargs(), eos_token_id=stop_token_ids(tokenizer, loaded.template),
            pad_token_id=tokenizer.pad_token_id, streamer=streamer, use_cache=True, synced_gpus=synced_gpus,
        )
    new = out[:, inputs["input_ids"].shape[1]:]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
