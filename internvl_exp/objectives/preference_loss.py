"""Preference losses of InternVL's MPO: sigmoid DPO, BCO-pair with a running-mean shift, RPO/NLL, and their sum.

Pure functions of per-sequence summed log-probs, so they can be checked without a model and reused by any trainer.
The numbers follow InternVL's MultimodalDPOTrainer (on trl 0.10.1), checked against its golden outputs in
tests/test_preference_loss.py; docs/preference.md lists the differences (the running mean is checkpointable here).

Notation: pc/pr are the policy's summed log-probs of the chosen/rejected answers, rc/rr the reference's, each [B].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F

# Loss types this module knows; MPO combines the first two (plus the NLL term).
LOSS_TYPES = ("sigmoid", "bco_pair")


def sigmoid_dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair DPO loss -log σ(β·((pc−pr)−(rc−rr))), with conservative-DPO label smoothing ε.

    With ε > 0 the preference label is trusted with probability 1−ε: (1−ε)·(−log σ(βz)) + ε·(−log σ(−βz)).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    z = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    losses = -F.logsigmoid(beta * z)
    if label_smoothing:
        losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * z)
    return losses


def implicit_rewards(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> torch.Tensor:
    """β·(policy − reference) log-prob: DPO's implicit reward of each sequence."""
    return beta * (policy - reference)


def bco_pair_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    delta: float,
) -> torch.Tensor:
    """Per-pair BCO loss: chosen reward pushed above δ, rejected below: −log σ(a−δ) − log σ(−(b−δ)).

    a, b are the implicit rewards of the chosen and rejected answers; δ is a constant (no gradient), normally
    `RunningMean.update(...)` of this batch's rewards.
    """
    a = implicit_rewards(policy_chosen, reference_chosen, beta)
    b = implicit_rewards(policy_rejected, reference_rejected, beta)
    return -F.logsigmoid(a - delta) - F.logsigmoid(-(b - delta))


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@dataclass
class RunningMean:
    """The δ of BCO-pair: the cumulative mean of every batch-mean reward fed to it, across ranks.

    InternVL (trl's RunningMoments) starts at mean 0 with count 1e-24 and merges each update's (sum, count) into
    the running mean, so the first update sets δ to that batch's mean and later δ is the plain average of all
    per-(micro-batch, rank) means seen, not an exponential average. Unlike InternVL's, this state is meant to be
    saved with the checkpoint (`state_dict`/`load_state_dict`) so a resumed run does not restart δ at 0.
    """

    mean: float = 0.0
    count: float = 1e-24

    def update(self, values: torch.Tensor, all_ranks: bool = True) -> float:
        """Merge `values` (InternVL passes one scalar, the batch mean of all 2B rewards) and return the new mean.

        With `all_ranks` and an initialised process group, the sum and count are all-reduced first, so every rank
        holds the same δ (each rank must call this at the same point: it is a collective).
        """
        values = values.detach().reshape(-1).to(torch.float64)
        stats = torch.stack([values.sum(), torch.tensor(float(values.numel()), dtype=torch.float64,
                                                        device=values.device)])
        if all_ranks and _world() > 1:
            import torch.distributed as dist

            # gloo and NCCL both reduce float64; the sum of means over ranks / ranks = the global mean.
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        total, n = float(stats[0]), float(stats[1])
        if n == 0:
            return self.mean
        new_count = self.count + n
        self.mean += (total / n - self.mean) * n / new_count
        self.count = new_count
        return self.mean

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        missing = {"mean", "count"} - set(state)
        if missing:
            raise KeyError(f"RunningMean state lacks {sorted(missing)}; it needs 'mean' and 'count'")
        count = float(state["count"])
        if not (count > 0 and math.isfinite(count) and math.isfinite(float(state["mean"]))):
            raise ValueError(f"RunningMean state is not a valid mean/count: {dict(state)}")
        self.mean, self.count = float(state["mean"]), count


def chosen_nll(
    chosen_logp_sums: torch.Tensor, chosen_token_counts: torch.Tensor, normalisation: str = "token"
) -> torch.Tensor:
    """The RPO/generation term: negative log-likelihood of the chosen answers.

    "token" (InternVL's code): −Σ_i pc_i / Σ_i n_i, the cross entropy averaged over every supervised chosen token
    of the batch. "sequence" (the MPO paper's formula): mean_i(−pc_i / n_i). They agree at one pair per batch.
    A batch without supervised tokens contributes 0 (counts are clamped to 1) rather than NaN.
    """
    counts = chosen_token_counts.to(chosen_logp_sums.dtype)
    if normalisation == "token":
        return -chosen_logp_sums.sum() / counts.sum().clamp(min=1.0)
    if normalisation == "sequence":
        return (-chosen_logp_sums / counts.clamp(min=1.0)).mean()
    raise ValueError(f"nll normalisation must be 'token' or 'sequence', got {normalisation!r}")


@dataclass(frozen=True)
class PreferenceObjective:
    """Weights of the MPO sum. The defaults are InternVL's official MPO settings; DPO is
    `PreferenceObjective(weights={"sigmoid": 1.0}, rpo_alpha=None)`."""

    beta: float = 0.1
    weights: Mapping[str, float] = field(default_factory=lambda: {"sigmoid": 0.8, "bco_pair": 0.2})
    rpo_alpha: float | None = 1.0
    label_smoothing: float = 0.0
    nll_normalisation: str = "token"

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(LOSS_TYPES)
        if unknown:
            raise ValueError(f"unknown preference loss type(s) {sorted(unknown)}; known: {list(LOSS_TYPES)}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")

    @property
    def uses_running_mean(self) -> bool:
        return bool(self.weights.get("bco_pair", 0.0))


@dataclass
class PreferenceLoss:
    loss: torch.Tensor  # scalar to backpropagate
    terms: dict[str, torch.Tensor]  # unweighted per-pair losses by type, plus "nll" (scalar) when computed
    delta: float | None  # the BCO-pair shift used, if any
    metrics: dict[str, float]


def preference_loss(
    objective: PreferenceObjective,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    chosen_token_counts: torch.Tensor | None = None,
    running: RunningMean | None = None,
) -> PreferenceLoss:
    """Σ_t w_t·mean(L_t) + rpo_alpha·NLL over one micro-batch (MPO: 0.8·sigmoid + 0.2·bco_pair + 1·NLL).

    `running` is required when bco_pair has a weight; it is updated once per call, as InternVL does per
    micro-batch. `chosen_token_counts` is required when rpo_alpha is set.
    """
    beta = objective.beta
    args = (policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    terms: dict[str, torch.Tensor] = {}
    total = policy_chosen.new_zeros(())
    delta = None
    for name, weight in objective.weights.items():
        if not weight:
            continue
        if name == "sigmoid":
            losses = sigmoid_dpo_losses(*args, beta=beta, label_smoothing=objective.label_smoothing)
        else:
            if running is None:
                raise ValueError("bco_pair needs a RunningMean for its δ; pass running=RunningMean()")
            rewards = torch.cat([implicit_rewards(policy_chosen, reference_chosen, beta),
                                 implicit_rewards(policy_rejected, reference_rejected, beta)])
            delta = running.update(rewards.mean())
            losses = bco_pair_losses(*args, beta=beta, delta=delta)
        terms[name] = losses
        total = total + weight * losses.mean()
    if objective.rpo_alpha is not None:
        if chosen_token_counts is None:
            raise ValueError("rpo_alpha is set, so the NLL term needs chosen_token_counts")
        nll = chosen_nll(policy_chosen, chosen_token_counts, objective.nll_normalisation)
        terms["nll"] = nll
        total = total + objective.rpo_alpha * nll
    with torch.no_grad():
        a = implicit_rewards(policy_chosen, reference_chosen, beta)
        b = implicit_rewards(policy_rejected, reference_rejected, beta)
        metrics = {
            "rewards/chosen": a.mean().item(),
            "rewards/rejected": b.mean().item(),
            "rewards/accuracies": (a > b).float().mean().item(),
            "rewards/margins": (a - b).mean().item(),
            "logps/chosen": policy_chosen.mean().item(),
            "logps/rejected": policy_rejected.mean().item(),
        }
        if "nll" in terms:
            metrics["nll_loss"] = terms["nll"].item()
        for name, losses in terms.items():
            if name != "nll":
                metrics[f"loss/{name}"] = losses.mean().item()
        if delta is not None:
            metrics["bco_pair/delta"] = delta
    return PreferenceLoss(loss=total, terms=terms, delta=delta, metrics=metrics)
