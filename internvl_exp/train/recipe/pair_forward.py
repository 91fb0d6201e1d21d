"""One forward over a batch of preference pairs ([chosen; rejected], collate_pairs): the summed log-probs and
supervised counts of both halves, the images encoded once for both. Used by the policy's step
(preference_step.py) and the reference (reference.py)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from internvl_exp.objectives.sequence_logps import sequence_logps_from_logits
from internvl_exp.train.recipe.chunked_loss import model_sequence_logps


def _vlm(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module whose forward encodes the images (transformers' InternVLModel: get_image_features and
    get_placeholder_mask), under any wrapper (PEFT, DDP, DeepSpeed)."""
    for module in model.modules():
        if hasattr(module, "get_image_features") and hasattr(module, "get_placeholder_mask"):
            return module
    return None


@contextlib.contextmanager
def images_encoded_once(unwrapped: torch.nn.Module) -> Iterator[bool]:
    """For one forward of a pair batch (pixels once): the image features are computed once and given to the
    chosen rows and again to the rejected rows. Yields False when the model has no such hook (then the caller
    repeats the pixels instead)."""
    inner = _vlm(unwrapped)
    if inner is None:
        yield False
        return
    encode = inner.get_image_features

    def twice(*args: Any, **kwargs: Any) -> Any:
        out = encode(*args, **kwargs)
        out.pooler_output = torch.cat([out.pooler_output, out.pooler_output])
        return out

    inner.get_image_features = twice  # an instance attribute, found before the class's method
    try:
        yield True
    finally:
        del inner.get_image_features


def batch_logps(model: Any, unwrapped: torch.nn.Module, batch: dict[str, Any], chunked: bool) -> dict[str, torch.Tensor]:
    """Summed log-probs and supervised counts of the chosen and rejected halves of `batch`, from one forward of
    `model` (a wrapper, or the module itself) over all 2B rows."""
    b = int(batch["num_pairs"])
    labels = batch["labels"]
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    pixels = batch.get("pixel_values")
    with images_encoded_once(unwrapped) as once:
        if pixels is not None:
            inputs["pixel_values"] = pixels if once else torch.cat([pixels, pixels])
        if chunked:
            sums, counts, _ = model_sequence_logps(model, unwrapped, inputs, labels)
        else:
            logits = model(**inputs, use_cache=False).logits
            sums, counts = sequence_logps_from_logits(logits, labels)
    if sums.shape[0] != 2 * b:
        raise ValueError(f"the batch has {sums.shape[0]} rows for {b} pairs; expected [chosen; rejected] = {2 * b}")
    return {"chosen_logps": sums[:b], "rejected_logps": sums[b:], "chosen_counts": counts[:b],
            "rejected_counts": counts[b:]}
