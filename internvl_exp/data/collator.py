"""Batch collation for variable tile counts and lengths.

Pads with the tokenizer's pad id (never a hard-coded 0), builds the attention mask from the true
lengths (a real token with id 0 stays attended), and concatenates `pixel_values` in placeholder order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from internvl_exp.data.templates import IGNORE_INDEX


@dataclass
class Collator:
    pad_token_id: int
    skipped: int = 0  # samples dropped because their media failed to load (on_error=skip)

    def __call__(self, features: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        batch = [f for f in features if f is not None]
        self.skipped += len(features) - len(batch)
        if not batch:
            raise RuntimeError("every sample of this batch failed to load; see the warnings above")
        longest = max(len(f["input_ids"]) for f in batch)
        input_ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, f in enumerate(batch):
            n = len(f["input_ids"])
            input_ids[i, :n] = f["input_ids"]
            labels[i, :n] = f["labels"]
            attention_mask[i, :n] = 1
        out = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        pixels = [f["pixel_values"] for f in batch if f.get("pixel_values") is not None]
        if pixels:
            out["pixel_values"] = torch.cat(pixels)
        return out
