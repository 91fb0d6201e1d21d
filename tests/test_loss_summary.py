"""initial_loss and final_loss are measured the same way (means over equal windows of steps), and the
Trainer's own train_loss is recorded beside them. Oracle: the Trainer's logged windows of the same run."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import compose


def test_window_is_the_logging_interval_capped_at_half_the_run():
    from internvl_exp.train.reporting.loss_summary import window_size

    assert window_size(10, 6) == 3 and window_size(3, 6) == 3 and window_size(2, 100) == 2
    assert window_size(1, 1) == 1 and window_size(10, 1) == 1 and window_size(0.25, 40) == 10


def test_summary_losses_are_equal_windows_and_train_loss_is_the_trainers(tmp_path, demo_dir, caplog):
    from internvl_exp.launch.job import run_job

    overrides = ["trainer.max_steps=6", "trainer.logging_steps=3", "trainer.save_final=false"]
    run_dir = tmp_path / "outputs" / "default" / "loss"
    with caplog.at_level(logging.INFO, logger="internvl_exp.launch.job"):
        run_job(compose(overrides, tmp_path, demo_dir), run_dir, overrides)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The Trainer logs step 1 alone (logging_first_step), then the mean of steps 2-3, then of steps 4-6.
    logged = {h["step"]: h["loss"] for h in metrics["loss_history"]}
    assert sorted(logged) == [1, 3, 6]
    assert metrics["loss_window_steps"] == 3
    assert metrics["initial_loss"] == pytest.approx((logged[1] + 2 * logged[3]) / 3, rel=1e-5)
    assert metrics["final_loss"] == pytest.approx(logged[6], rel=1e-5)
    assert metrics["train_loss"] == pytest.approx((logged[1] + 2 * logged[3] + 3 * logged[6]) / 6, rel=1e-5)
    line = next(r.getMessage() for r in caplog.records if "run finished (completed)" in r.getMessage())
    assert (f"loss {metrics['initial_loss']:.4f} -> {metrics['final_loss']:.4f} (means of the first/last 3 steps; "
            f"run mean {metrics['train_loss']:.4f}) in 6 steps") in line
