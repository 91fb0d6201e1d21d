"""Preference losses against InternVL's own MultimodalDPOTrainer (golden values) and float64 formulas."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from internvl_exp.objectives.preference_loss import (
    PreferenceObjective,
    RunningMean,
    bco_pair_losses,
    chosen_nll,
    preference_loss,
    sigmoid_dpo_losses,
)

GOLDEN = Path(__file__).parent / "fixtures" / "golden_mpo" / "qwen2_vit300m"
KEYS = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")


def _golden(variant: str) -> dict:
    return torch.load(GOLDEN / variant / "results.pt", weights_only=False)


def _chosen_counts(lines: list[int]) -> torch.Tensor:
    summary = json.loads((GOLDEN / "samples" / "summary.json").read_text())
    by_line = {entry["jsonl_line"]: entry for entry in summary}
    return torch.tensor([by_line[k]["chosen"]["num_supervised_tokens"] for k in lines])


def _close(ours: float | torch.Tensor, theirs: float | torch.Tensor, rel: float = 1e-5) -> None:
    ours_t, theirs_t = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(theirs, dtype=torch.float64)
    assert torch.allclose(ours_t, theirs_t, rtol=rel, atol=0), (ours_t, theirs_t)


def test_mpo_two_steps_match_internvl_golden() -> None:
    golden = _golden("mpo")
    running = RunningMean()
    objective = PreferenceObjective()  # the official 0.8/0.2, rpo_alpha 1, beta 0.1
    for step, lines in (("step1", list(range(7))), ("step2", [0, 2, 4])):
        g = golden[step]
        out = preference_loss(objective, *(g[k] for k in KEYS), chosen_token_counts=_chosen_counts(lines),
                              running=running)
        sig, bco = g["terms"]
        assert (sig["loss_type"], bco["loss_type"]) == ("sigmoid", "bco_pair")
        _close(out.terms["sigmoid"], sig["losses_per_sample_unweighted"])
        _close(out.terms["bco_pair"], bco["losses_per_sample_unweighted"])
        _close(out.delta, bco["delta_used"])
        _close(running.mean, bco["running_moments_after"]["mean"])
        _close(running.count, bco["running_moments_after"]["count"])
        _close(out.terms["nll"], g["nll_loss"])
        _close(out.loss, g["loss"])
        for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
            _close(out.metrics[name], g["metrics"][name], rel=1e-4)
        assert out.metrics["rewards/accuracies"] == pytest.approx(g["metrics"]["rewards/accuracies"])
    # δ after step 2 is the plain mean of the two batch-mean rewards, not an EMA and not the step-2 mean.
    assert golden["step2"]["terms"][1]["delta_used"] != pytest.approx(golden["step1"]["terms"][1]["delta_used"])


def test_plain_dpo_matches_internvl_golden() -> None:
    g = _golden("dpo")["step1"]
    out = preference_loss(PreferenceObjective(weights={"sigmoid": 1.0}, rpo_alpha=None), *(g[k] for k in KEYS))
    _close(out.loss, g["loss"])
    _close(out.terms["sigmoid"], g["terms"][0]["losses_per_sample_unweighted"])
    assert set(out.terms) == {"sigmoid"} and out.delta is None and "nll_loss" not in out.metrics


def _random_logps(batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    # Summed log-probs of a few hundred tokens whose log-ratios span a few nats, as in real training.
    return tuple(-150 + 8 * torch.randn(batch, generator=g, dtype=torch.float64) for _ in range(4))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_sigmoid_matches_float64_formula(smoothing: float) -> None:
    pc, pr, rc, rr = _random_logps(16, seed=1)
    beta = 0.37
    z = beta * ((pc - pr) - (rc - rr))
    sig = lambda x: 1 / (1 + torch.exp(-x))  # noqa: E731 - independent of F.logsigmoid
    expected = -(1 - smoothing) * torch.log(sig(z)) - smoothing * torch.log(sig(-z))
    ours = sigmoid_dpo_losses(pc.float(), pr.float(), rc.float(), rr.float(), beta, smoothing)
    _close(ours, expected, rel=1e-5)
    # Swapping chosen and rejected must change the loss (catches a sign error).
    assert not torch.allclose(ours, sigmoid_dpo_losses(pr.float(), pc.float(), rr.float(), rc.float(), beta))


def test_bco_pair_matches_float64_formula_and_gradient_ignores_delta() -> None:
    pc, pr, rc, rr = _random_logps(8, seed=2)
    beta, delta = 0.1, 0.7
    a, b = beta * (pc - rc), beta * (pr - rr)
    expected = torch.log1p(torch.exp(-(a - delta))) + torch.log1p(torch.exp(b - delta))
    pc32 = pc.float().requires_grad_()
    ours = bco_pair_losses(pc32, pr.float(), rc.float(), rr.float(), beta, delta)
    _close(ours, expected, rel=1e-5)
    ours.sum().backward()
    # d/dpc of -log σ(β(pc−rc)−δ) = −β·σ(−(a−δ)); δ is a constant.
    _close(pc32.grad, -beta * torch.sigmoid(-(a - delta)), rel=1e-5)


def test_nll_normalisations() -> None:
    sums, counts = torch.tensor([-30.0, -10.0]), torch.tensor([10, 2])
    assert chosen_nll(sums, counts).item() == pytest.approx(40 / 12)  # InternVL: token mean over the batch
    assert chosen_nll(sums, counts, "sequence").item() == pytest.approx((3 + 5) / 2)  # the paper
    assert chosen_nll(torch.tensor([0.0]), torch.tensor([0])).item() == 0.0
    with pytest.raises(ValueError, match="'token' or 'sequence'"):
        chosen_nll(sums, counts, "mean")


def test_weights_are_configurable_and_validated() -> None:
    pc, pr, rc, rr = (t.float() for t in _random_logps(4, seed=3))
    counts = torch.tensor([5, 6, 7, 8])
    out = preference_loss(PreferenceObjective(beta=0.2, weights={"sigmoid": 0.5, "bco_pair": 2.0}, rpo_alpha=0.3),
                          pc, pr, rc, rr, counts, RunningMean())
    expected = (0.5 * sigmoid_dpo_losses(pc, pr, rc, rr, 0.2).mean()
                + 2.0 * bco_pair_losses(pc, pr, rc, rr, 0.2, out.delta).mean() + 0.3 * chosen_nll(pc, counts))
    _close(out.loss, expected, rel=1e-6)
    with pytest.raises(ValueError, match="unknown preference loss"):
        PreferenceObjective(weights={"ipo": 1.0})
    with pytest.raises(ValueError, match="RunningMean"):
        preference_loss(PreferenceObjective(), pc, pr, rc, rr, counts)
    with pytest.raises(ValueError, match="chosen_token_counts"):
        preference_loss(PreferenceObjective(weights={"sigmoid": 1.0}), pc, pr, rc, rr)


def test_running_mean_state_round_trip() -> None:
    first = RunningMean()
    first.update(torch.tensor(0.5))
    resumed = RunningMean()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # survives a JSON checkpoint file
    for run in (first, resumed):
        run.update(torch.tensor(-0.1))
    assert resumed.mean == first.mean == pytest.approx(0.2)
    assert RunningMean().update(torch.tensor(-0.1)) == pytest.approx(-0.1)  # a fresh δ would differ
    with pytest.raises(KeyError, match="'count'"):
        RunningMean().load_state_dict({"mean": 0.0})
    with pytest.raises(ValueError, match="not a valid"):
        RunningMean().load_state_dict({"mean": 0.0, "count": math.inf})


def _rank_update(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    running = RunningMean()
    # Rank-dependent batch means: 0.1 and 0.3 at step 1, then 0.5 and 0.9.
    deltas = [running.update(torch.tensor(0.1 + 0.2 * rank)), running.update(torch.tensor(0.5 + 0.4 * rank))]
    torch.save({"deltas": deltas, "state": running.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_running_mean_is_shared_across_two_gloo_ranks(tmp_path: Path) -> None:
    mp.start_processes(_rank_update, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert results[0] == results[1]
    assert results[0]["deltas"] == pytest.approx([0.2, (0.1 + 0.3 + 0.5 + 0.9) / 4])
    assert results[0]["state"]["count"] == pytest.approx(4.0)
