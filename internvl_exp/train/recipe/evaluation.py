"""Eval during training: the eval loss over the whole eval set, reduced like the training loss, on every rank.

The eval loss is the training loss's formula (train/recipe/loss.py) over the whole eval set at once:

    sum over every supervised token of the eval set (all ranks) of w_t * CE_t  /  sum of the same w_t

so with data.loss_reduction=token it is the mean over every eval token (not a mean of per-batch means), with
`sample` the mean of per-sample means, with `square` InternVL's square averaging. Each rank sums its shard;
one all-reduce of (sum, weight) gives the exact value, whatever the world size or batch size.

Sharding: rank r takes eval positions r, r + W, r + 2W, ...; every rank gets the same number of items (and
so of batches: ZeRO-3 gathers weights in every forward, a collective), the short ranks padded with a copy of
a real sample whose labels are all ignored (weight 0: it runs the same graph and adds nothing). Batches are
padded (never packed; the per-token loss is the same) and a text-only batch still runs the vision path under
more than one process (train/recipe/same_graph.py), as in training.

`eval_generate_samples` > 0: greedy answers for the first N eval samples (inference/generate.py, the saved
chat template's prompt), scored by exact and relaxed match (inference/scoring.py), counted over all ranks.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from internvl_exp.data.templates import IGNORE_INDEX
from internvl_exp.inference.generate import Sampling, generate, open_images, split_prompt
from internvl_exp.inference.load import Loaded
from internvl_exp.inference.scoring import exact_match, relaxed_match


class EvalShard(torch.utils.data.Dataset):
    """Rank `rank`'s items of `dataset` (positions rank, rank + world, ...), padded to ceil(n / world) items."""

    def __init__(self, dataset: Any, rank: int, world: int):
        self.dataset = dataset
        self.rank, self.world, self.n = rank, world, len(dataset)

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)

    def __getitem__(self, i: int) -> dict[str, Any]:
        p = self.rank + self.world * i
        if p < self.n:
            return self.dataset[p]
        item = dict(self.dataset[p % self.n])  # padding: the same graph, no supervised token
        item["labels"] = torch.full_like(item["labels"], IGNORE_INDEX)
        return item


def eval_loss_sums(trainer: Any, dataset: Any, collator: Any, batch_size: int) -> torch.Tensor:
    """[sum of w_t * CE_t, sum of w_t, real samples] over `dataset`, summed over every rank (float64)."""
    args = trainer.args
    shard = EvalShard(dataset, args.process_index, args.world_size)
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, collate_fn=collator,
                                         num_workers=args.dataloader_num_workers)
    model = trainer.model
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=args.device)
    try:
        with torch.no_grad():
            for batch in loader:
                weight = batch.pop("loss_weight").to(args.device, torch.float32)
                labels = batch.pop("labels").to(args.device)
                batch.pop("sample_lengths", None)
                inputs = trainer._prepare_inputs(batch)  # device (and DeepSpeed's dtype for pixel_values)
                with trainer.compute_loss_context_manager():
                    total, _ = trainer.loss_sum(model, inputs, labels, weight)  # plain or chunked
                real = (labels != IGNORE_INDEX).any(dim=1).sum()
                sums += torch.stack([total.double(),
                                     weight[:, 1:].sum().double(), real.double()])
    finally:
        model.train(was_training)
    if args.world_size > 1:
        sums = trainer.accelerator.reduce(sums, reduction="sum")
    return sums


def generation_scores(trainer: Any, dataset: Any, n: int, template: str | None,
                      max_new_tokens: int = 32) -> dict[str, float]:
    """Exact and relaxed match of greedy answers for the first `n` eval samples, over every rank."""
    args = trainer.args
    rows = list(range(min(n, len(dataset.plan))))
    mine = rows[args.process_index::args.world_size]
    # Every rank makes the same number of generate calls (ZeRO-3: synced_gpus keeps their forwards in step).
    per_rank = math.ceil(len(rows) / args.world_size)
    padded = (mine + rows[:1] * per_rank)[:per_rank]
    samples = [dataset.sample_of_row(row) for row in padded]
    model = trainer.model
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=args.device)
    try:
        if samples:
            prompts, refs = zip(*(split_prompt(s.conversations) for s in samples))
            images = [open_images(s.images) for s in samples]
            loaded = Loaded(model, trainer.processing_class, "training", template, {})
            with trainer.compute_loss_context_manager():
                preds = generate(loaded, prompts, images, Sampling(max_new_tokens), synced_gpus=args.world_size > 1)
            for k, (pred, ref) in enumerate(zip(preds, refs)):
                if k < len(mine):
                    counts += torch.tensor([exact_match(pred, ref), relaxed_match(pred, ref), 1.0],
                                           dtype=torch.float64, device=args.device)
    finally:
        model.train(was_training)
    if args.world_size > 1:
        counts = trainer.accelerator.reduce(counts, reduction="sum")
    exact, relaxed, total = counts.tolist()
    return {"exact_match": exact / total, "relaxed_match": relaxed / total} if total else {}


def eval_history(log_history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json's eval block from the Trainer's log history: the eval_loss history (step, value), the best
    and the final (the last evaluation, of the final model) values, and the generation scores when measured."""
    evals = [h for h in log_history if "eval_loss" in h]
    if not evals:
        return {}
    out: dict[str, Any] = {
        "eval_loss": [{"step": h["step"], "value": h["eval_loss"]} for h in evals],
        "best_eval_loss": min(h["eval_loss"] for h in evals),
        "final_eval_loss": evals[-1]["eval_loss"],
        "eval_samples": evals[-1].get("eval_samples"),
    }
    for key in ("eval_exact_match", "eval_relaxed_match"):
        scored = [h for h in evals if key in h]
        if scored:
            out[f"{key}_history"] = [{"step": h["step"], "value": h[key]} for h in scored]
            out[key] = scored[-1][key]
    return out
