"""The training loss from per-token losses and the collator's per-token weights, exact over an optimizer step.

Every collator (padded or packed) gives `loss_weight`, aligned with `labels`: 0 where nothing is supervised,
else 1 (`data.loss_reduction=token`), 1/n (`sample`) or 1/sqrt(n) (`square`), n = the sample's supervised
tokens (data/packing.py: `sample_weight`). The loss of an optimizer step is

    sum over the step's tokens (every micro-batch of the accumulation, every rank) of w_t * CE_t
    ---------------------------------------------------------------------------------------------
                         sum over the same tokens of w_t

so `token` is the mean over every supervised token of the step, `sample` the mean of per-sample means and
`square` InternVL's square averaging, whatever the padding, the packing, the accumulation or the world size.
The denominator is the Trainer's `num_items_in_batch`: we make it the summed weights of the step's batches,
all-gathered across ranks (`step_weight`), which is how HF 5.x already normalises the token mean.
Each micro-batch returns its share times the number of processes, since DDP/DeepSpeed average gradients over
ranks; the Trainer then adds the micro-batches without dividing by the accumulation steps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from internvl_exp.data.templates import IGNORE_INDEX

# Batch keys for the loss and the counters, never model inputs.
LOSS_KEYS = ("loss_weight", "sample_lengths")


def weighted_token_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_t w_t * CE_t over shifted positions (position t's logits predict labels[t + 1]), in float32."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    w = weight[:, 1:].to(logits.device, torch.float32)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1).to(logits.device),
                         ignore_index=IGNORE_INDEX, reduction="none")
    return (ce * w.reshape(-1)).sum()


def step_weight(batches: list[dict[str, Any]], device: torch.device, accelerator: Any, world_size: int) -> torch.Tensor:
    """The summed loss weights of the step's micro-batches, over every rank."""
    total = sum(b["loss_weight"].to(torch.float64).sum() for b in batches).to(device)
    if world_size > 1:
        total = accelerator.gather(total.reshape(1)).sum()
    return total
