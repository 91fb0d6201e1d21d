"""Batch collation for variable tile counts and lengths.

Pads with the tokenizer's pad id (never a hard-coded 0), builds the attention mask from the true
lengths (a real token with id 0 stays attended), and builds `pixel_values` in placeholder order.
A sample whose media fails to load never reaches it: under data.on_error=skip the dataset serves the next
planned sample instead (dataset.py), so every batch has the configured size.

The dataset hands over uint8 tiles (`pixel_tiles`, 4x smaller than floats) and the collator normalises
them straight into the one float buffer of the batch: no per-sample float copies and no concatenation
pass. Inside a data-loader worker that buffer is allocated in shared memory (as torch's default_collate
does), so sending the batch to the training process copies nothing.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from internvl_exp.data.images import normalize_into
from internvl_exp.data.loss_weights import check_reduction, sample_weight
from internvl_exp.data.templates import IGNORE_INDEX


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def pixel_values(features: Sequence[dict[str, Any]]) -> torch.Tensor | None:
    """All tiles of `features`, in order, as one normalised float tensor (None when there are none).

    Accepts dataset items (`pixel_tiles` uint8 + `pixel_norm`) and already-normalised `pixel_values`.
    """
    parts = []
    for f in features:
        if f.get("pixel_tiles") is not None:
            parts.append((f["pixel_tiles"], f["pixel_norm"]))
        elif f.get("pixel_values") is not None:
            parts.append((f["pixel_values"], None))
    if not parts:
        return None
    floats = [t.dtype for t, norm in parts if norm is None]
    dtype = floats[0] if floats else torch.float32
    out = _empty((sum(len(t) for t, _ in parts), *parts[0][0].shape[1:]), dtype)
    start = 0
    for tiles, norm in parts:
        view = out[start : start + len(tiles)]
        if norm is None:
            view.copy_(tiles)
        else:
            normalize_into(view, tiles, norm)
        start += len(tiles)
    return out


class Collator:
    """Padded rows; `loss_weight` per position for the trainer's loss (data/loss_weights.py, train/recipe/loss.py)."""

    def __init__(self, pad_token_id: int | None, loss_reduction: str = "token"):
        self.loss_reduction = check_reduction(loss_reduction)
        if pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its EOS) before training")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = list(features)
        longest = max(len(f["input_ids"]) for f in batch)
        input_ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        loss_weight = torch.zeros((len(batch), longest), dtype=torch.float32)
        for i, f in enumerate(batch):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.as_tensor(f["input_ids"])
            labels[i, :n] = torch.as_tensor(f["labels"])
            attention_mask[i, :n] = 1
            loss_weight[i, :n] = sample_weight(labels[i, :n], self.loss_reduction)
        out = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "loss_weight": loss_weight}
        pixels = pixel_values(batch)
        if pixels is not None:
            out["pixel_values"] = pixels
        return out
