"""Per-token loss weights, one rule for the padded and the packed collators (train/recipe/loss.py divides by their sum)."""

from __future__ import annotations

import math

import torch

from internvl_exp.data.templates import IGNORE_INDEX
from internvl_exp.errors import ConfigError

REDUCTIONS = ("token", "sample", "square")


def sample_weight(labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-position weights of one sample's labels: 0 where nothing is supervised (and at position 0, whose
    label no logit predicts), else 1 (`token`), 1/n (`sample`) or 1/sqrt(n) (`square`), n = the sample's
    supervised positions. The trainer divides the weighted token losses by the step's total weight."""
    supervised = labels != IGNORE_INDEX
    supervised[:1] = False
    n = int(supervised.sum())
    w = torch.zeros(labels.shape, dtype=torch.float32)
    if n == 0:
        return w
    value = {"token": 1.0, "sample": 1.0 / n, "square": 1.0 / math.sqrt(n)}[reduction]
    w[supervised] = value
    return w


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"data.loss_reduction: {reduction!r} is not one of {list(REDUCTIONS)}")
    return reduction
