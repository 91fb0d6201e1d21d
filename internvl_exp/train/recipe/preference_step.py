"""The preference step (objective dpo | mpo): log-probs of the policy and the reference, the loss, the metrics.

One policy forward runs over the chosen and the rejected rows together (collate_pairs' [chosen; rejected] batch),
through the wrapped model (DDP / DeepSpeed see an ordinary forward). The pixels are in the batch once: the vision
tower encodes them once and both halves get the same features (pair_forward.py `images_encoded_once`), so a stochastic
drop-path draws one mask per image for both answers (InternVL encodes each image twice, with two masks).
The reference's log-probs come without gradient from the same batch (train/recipe/reference.py builds it).
The loss is objectives/preference_loss.py's for the micro-batch; its δ (BCO-pair's running mean) is updated once
per micro-batch from every rank's rewards, as InternVL does, and saved with each checkpoint (`STATE_FILE`).

Eval (held-out pairs) computes the same terms over the whole eval set, reduced over ranks, with the training δ
as it stands: eval never moves δ (InternVL's eval updates it, so its training loss depends on how often it
evaluates).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from internvl_exp.config.chunked_loss import use_chunked_loss
from internvl_exp.config.schema import Config
from internvl_exp.data.preference import collate_pairs
from internvl_exp.objectives.preference_loss import (
    PreferenceObjective,
    RunningMean,
    bco_pair_losses,
    implicit_rewards,
    preference_loss,
    sigmoid_dpo_losses,
)
from internvl_exp.train.recipe.pair_forward import batch_logps
from internvl_exp.train.recipe.reference import build_reference, held_parameters, is_precomputed, precompute_reference

log = logging.getLogger(__name__)

STATE_FILE = "preference_state.json"  # δ's running mean in each checkpoint
# Logged names of the step's metrics (preference_loss's names -> ours).
RENAME = {"nll_loss": "nll", "bco_pair/delta": "delta"}
# Metrics logged as the last value, not a mean over the logging window.
LAST_VALUE = ("delta",)


def objective_of(cfg: Config) -> PreferenceObjective:
    """The run's `objective` group as the loss module's PreferenceObjective."""
    o = cfg.objective
    weights = {k: float(v) for k, v in (("sigmoid", o.weights.sigmoid), ("bco_pair", o.weights.bco_pair)) if v}
    return PreferenceObjective(beta=float(o.beta), weights=weights,
                               rpo_alpha=None if o.rpo_alpha is None else float(o.rpo_alpha),
                               label_smoothing=float(o.label_smoothing), nll_normalisation=str(o.nll_normalisation))


class PreferenceStep:
    """What the Trainer calls for a preference objective: the micro-batch loss, the eval, δ's state."""

    def __init__(self, objective: PreferenceObjective, reference: Any, chunked: bool):
        self.objective = objective
        self.reference = reference  # train/recipe/reference.py Reference
        self.chunked = chunked
        self.running = RunningMean()
        self.parameters_held = 0  # policy + reference, distinct tensors (set by the run; metrics.json)
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._last: dict[str, float] = {}

    # -- training ---------------------------------------------------------------------------------------------
    def loss(self, model: Any, unwrapped: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """The micro-batch's loss (a mean over its pairs; the Trainer scales it for accumulation); its metrics
        are kept for the next log."""
        policy = batch_logps(model, unwrapped, batch, self.chunked)
        ref = self.reference.logps(batch, self.chunked)
        out = preference_loss(self.objective, policy["chosen_logps"], policy["rejected_logps"],
                              ref["chosen_logps"].to(policy["chosen_logps"].device),
                              ref["rejected_logps"].to(policy["chosen_logps"].device),
                              policy["chosen_counts"], self.running if self.objective.uses_running_mean else None)
        for key, value in out.metrics.items():
            name = RENAME.get(key, key)
            if name in LAST_VALUE:
                self._last[name] = float(value)
            else:
                self._sums[name] += float(value)
                self._counts[name] += 1
        return out.loss

    def pop_metrics(self, accelerator: Any, world: int) -> dict[str, float]:
        """The means of the metrics since the last log over the micro-batches of every rank (a collective when
        world > 1: every rank logs at the same step), and δ's current value."""
        names = sorted(self._sums)
        if not names and not self._last:
            return {}
        if world > 1:
            values = torch.tensor([[self._sums[n], float(self._counts[n])] for n in names] or [[0.0, 0.0]],
                                  dtype=torch.float64, device=accelerator.device)
            values = accelerator.reduce(values, reduction="sum")
            sums = {n: (float(values[i, 0]), float(values[i, 1])) for i, n in enumerate(names)}
        else:
            sums = {n: (self._sums[n], float(self._counts[n])) for n in names}
        out = {n: s / c for n, (s, c) in sums.items() if c}
        out.update(self._last)
        self._sums.clear()
        self._counts.clear()
        return out

    # -- eval -------------------------------------------------------------------------------------------------
    def evaluate(self, trainer: Any, dataset: Any, batch_size: int, prefix: str = "eval") -> dict[str, float]:
        """The preference metrics over the whole eval set (every rank its shard), with the training δ."""
        args = trainer.args
        shard = PairShard(dataset, args.process_index, args.world_size)
        pad = dataset.encoder.tokenizer.pad_token_id
        loader = torch.utils.data.DataLoader(shard, batch_size=batch_size,
                                             collate_fn=functools.partial(_collate_real, pad_token_id=pad),
                                             num_workers=args.dataloader_num_workers)
        model = trainer.model
        unwrapped = trainer.accelerator.unwrap_model(model)
        o, delta = self.objective, self.running.mean
        keys = ("pairs", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected", "loss/sigmoid", "loss/bco_pair", "nll_sum", "nll_tokens",
                "nll_sequence")
        sums = torch.zeros(len(keys), dtype=torch.float64, device=args.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch, real in loader:
                    batch = trainer._prepare_inputs(batch)
                    with trainer.compute_loss_context_manager():
                        policy = batch_logps(model, unwrapped, batch, self.chunked)
                        ref = self.reference.logps(batch, self.chunked, split="eval")
                    pc, pr = policy["chosen_logps"].double(), policy["rejected_logps"].double()
                    rc = ref["chosen_logps"].double().to(pc.device)
                    rr = ref["rejected_logps"].double().to(pc.device)
                    n = policy["chosen_counts"].double()
                    w = real.to(pc.device, torch.float64)
                    a, b = implicit_rewards(pc, rc, o.beta), implicit_rewards(pr, rr, o.beta)
                    sig = sigmoid_dpo_losses(pc, pr, rc, rr, o.beta, o.label_smoothing)
                    bco = bco_pair_losses(pc, pr, rc, rr, o.beta, delta)
                    per = (w, a, b, (a > b).double(), a - b, pc, pr, sig, bco, -pc, n, -pc / n.clamp(min=1.0))
                    sums += torch.stack([(w * v).sum() if k != 0 else w.sum() for k, v in enumerate(per)])
        finally:
            model.train(was_training)  # frozen parts return to eval at their next forward (train/tuning/trainable.py)
        if args.world_size > 1:
            sums = trainer.accelerator.reduce(sums, reduction="sum")
        total = dict(zip(keys, sums.tolist()))
        pairs = total.pop("pairs")
        metrics = {f"{prefix}_{k}": v / pairs if pairs else float("nan") for k, v in total.items()
                   if k.startswith(("rewards/", "logps/", "loss/"))}
        token_nll = total["nll_sum"] / total["nll_tokens"] if total["nll_tokens"] else 0.0
        nll = token_nll if o.nll_normalisation == "token" else (total["nll_sequence"] / pairs if pairs else 0.0)
        loss = sum(w * metrics[f"{prefix}_loss/{name}"] for name, w in o.weights.items() if w)
        if o.rpo_alpha is not None:
            loss += o.rpo_alpha * nll
            metrics[f"{prefix}_nll"] = nll
        for name in ("sigmoid", "bco_pair"):
            if not o.weights.get(name):
                metrics.pop(f"{prefix}_loss/{name}", None)
        metrics[f"{prefix}_loss"] = loss if pairs else float("nan")
        metrics[f"{prefix}_samples"] = int(pairs)
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------------------
    def gather_delta(self, accelerator: Any, world: int) -> list[float]:
        """Every rank's δ (a collective when world > 1). They must agree: δ is updated from all ranks' rewards."""
        if world <= 1:
            return [self.running.mean]
        mine = torch.tensor([self.running.mean], dtype=torch.float64, device=accelerator.device)
        per_rank = [float(v) for v in accelerator.gather(mine).tolist()]
        if max(per_rank) != min(per_rank):  # every rank raises (none is left waiting at the next barrier)
            raise RuntimeError(f"BCO-pair's δ differs between ranks at this save: {per_rank}; it must be updated "
                               "from every rank's rewards at the same micro-batch")
        return per_rank

    def save(self, folder: Path, per_rank: list[float]) -> None:
        """δ's state into a checkpoint folder (main process only; before the folder's manifest), with every rank's
        δ as gathered at the save (`per_rank`, checked equal by gather_delta)."""
        (Path(folder) / STATE_FILE).write_text(json.dumps({"running_mean": self.running.state_dict(),
                                                           "per_rank_delta": per_rank}, indent=1))

    def restore(self, checkpoint: Path | str | None) -> None:
        """δ as the checkpoint saved it (every rank reads the same file), so a resumed run continues it."""
        if checkpoint is None:
            return
        path = Path(checkpoint) / STATE_FILE
        if not path.is_file():
            log.warning("%s has no %s (a checkpoint of another objective?): BCO-pair's δ starts again from 0",
                        checkpoint, STATE_FILE)
            return
        self.running.load_state_dict(json.loads(path.read_text())["running_mean"])
        log.info("preference: δ restored from %s: %.6g (over %g micro-batch means)", path, self.running.mean,
                 self.running.count)


class PairShard(torch.utils.data.Dataset):
    """Rank `rank`'s eval pairs (positions rank, rank + world, ...), padded to ceil(n / world) items with copies
    flagged not real (the same graph on every rank; they add nothing to the sums)."""

    def __init__(self, dataset: Any, rank: int, world: int):
        self.dataset, self.rank, self.world, self.n = dataset, rank, world, len(dataset)

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)

    def __getitem__(self, i: int) -> dict[str, Any]:
        p = self.rank + self.world * i
        item = dict(self.dataset[p % self.n])
        item["_real"] = p < self.n
        return item


def _collate_real(features: list[dict[str, Any]], pad_token_id: int) -> tuple[dict[str, Any], torch.Tensor]:
    return collate_pairs(features, pad_token_id), torch.tensor([bool(f["_real"]) for f in features])


def preference_history(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json's `preference` block: the logged preference metrics per step (training and eval), and the last
    of each (`final`, `final_eval`): e.g. optimized_metric=preference.final_eval.rewards/accuracies."""
    train_keys = ("rewards/", "logps/", "loss/", "nll", "delta")
    train = [{"step": h["step"], **{k: v for k, v in h.items() if k.startswith(train_keys)}}
             for h in log_history if any(k.startswith(train_keys) for k in h)]
    evals = [{"step": h["step"], **{k[len("eval_"):]: v for k, v in h.items()
                                    if k.startswith("eval_") and k not in ("eval_runtime", "eval_samples")}}
             for h in log_history if "eval_rewards/accuracies" in h]
    out: dict[str, Any] = {"history": train, "eval_history": evals}
    if train:
        out["final"] = {k: v for k, v in train[-1].items() if k != "step"}
    if evals:
        out["final_eval"] = {k: v for k, v in evals[-1].items() if k != "step"}
    return out



def preference_training(cfg: Config, args: Any, model: torch.nn.Module, dataset: Any, tokenizer: Any,
                        reference_loaded: torch.nn.Module | None, eval_dataset: Any = None,
                        start_checkpoint: Path | None = None, stored: Any = None) -> tuple[Any, Any, PreferenceStep]:
    """(train dataset, collator, step) of a dpo|mpo run: the pairs as they are, `collate_pairs`, and the step with
    its reference (train/recipe/reference.py; `reference_loaded` from load_reference before the policy changed).
    With objective.reference=precomputed the reference scores the train and eval pairs once here and is released:
    the step looks its log-probs up (the caller must drop its own `reference_loaded` too); `stored`: the lookup
    when every store already exists (reference.stored_reference; then no reference was loaded)."""
    chunked = use_chunked_loss(cfg.trainer.chunked_loss, cfg.model.name)
    reference = stored if stored is not None else build_reference(cfg, args, model, reference_loaded)
    reference_loaded = None  # the live Reference holds it now (and only it, for precomputed)
    if is_precomputed(cfg) and stored is None:
        live = reference
        reference = precompute_reference(cfg, args, live, {"train": dataset, "eval": eval_dataset},
                                         Path(start_checkpoint), chunked)
        if live.kind == "zero3":
            live.call.destroy()  # the engine's hooks and partitioned weights go with it
        del live
        import gc

        gc.collect()
    step = PreferenceStep(objective_of(cfg), reference, chunked)
    step.parameters_held = held_parameters(model, *([reference.module] if reference.module is not None else []))
    log.info("objective %s: %s; reference: %s; parameters held by policy and reference: %s", cfg.objective.kind,
             step.objective, reference.kind, f"{step.parameters_held:,}")
    return dataset, functools.partial(collate_pairs, pad_token_id=tokenizer.pad_token_id), step
