"""Resume and preemption: complete checkpoints, retention, what a re-run does, and the real launch.py killed
(SIGKILL during a save), preempted (SIGTERM) and re-run; the resumed runs must end with the uninterrupted
run's weights, bit for bit (deterministic CPU float32)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, compose, run_launch
from internvl_exp.train.checkpointing import checkpoints
from internvl_exp.train.checkpointing.resume import RunRefused, fresh_run_dir, plan_resume

pytestmark = pytest.mark.slow  # launch.py runs killed, signalled and resumed

# Six optimizer steps, a checkpoint every two, every checkpoint kept.
RUN = ["trainer.max_steps=6", "trainer.save_steps=2", "trainer.save_total_limit=null", "trainer.logging_steps=1",
       "trainer.per_device_train_batch_size=2"]


def _ckpt(folder: Path, step: int, complete: bool = True) -> Path:
    p = folder / f"checkpoint-{step}"
    p.mkdir(parents=True)
    (p / "model.safetensors").write_text("x")
    if complete:
        checkpoints.write_marker(p, {"global_step": step})
    return p


# -- complete checkpoints and retention (files only) ---------------------------------------------------------


def test_newest_complete_orders_by_step_and_names_incomplete(tmp_path, caplog):
    _ckpt(tmp_path, 2), _ckpt(tmp_path, 10), _ckpt(tmp_path, 12, complete=False)
    (tmp_path / "checkpoint-x").mkdir()
    with caplog.at_level(logging.WARNING):
        newest = checkpoints.newest_complete(tmp_path)
    assert newest == tmp_path / "checkpoint-10"  # 10 > 2 numerically, 12 has no marker
    assert str(tmp_path / "checkpoint-12") in caplog.text and "interrupted" in caplog.text


def test_retention_keeps_newest_complete_where_hf_rotation_would_not(tmp_path):
    from transformers.trainer_utils import rotate_checkpoints

    def layout(root: Path) -> None:
        for step in (2, 4, 6):
            _ckpt(root, step)
            time.sleep(0.01)
        _ckpt(root, 3, complete=False)
        _ckpt(root, 8, complete=False)  # a save in progress (or killed)
        os.utime(root / "checkpoint-3", (time.time() - 3600,) * 2)
        os.utime(root / "checkpoint-8", (time.time() + 3600,) * 2)

    hf, ours = tmp_path / "hf", tmp_path / "ours"
    layout(hf), layout(ours)
    # HF's rotation counts the unmarked folder as the newest: with a limit of 1 it deletes every complete one.
    rotate_checkpoints(str(hf), save_total_limit=1, use_mtime=True)
    assert checkpoints.list_checkpoints(hf).complete == []
    deleted = checkpoints.retain(ours, 1)
    left = checkpoints.list_checkpoints(ours)
    assert left.complete == [ours / "checkpoint-6"]
    assert left.incomplete == [ours / "checkpoint-8"]  # newer than the newest complete: not ours to judge
    assert sorted(p.name for p in deleted) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert checkpoints.retain(ours, None) == []


def test_plan_resume_cases(tmp_path):
    run = tmp_path / "run"
    assert plan_resume("auto", run).checkpoint is None  # nothing there: start at step 0
    with pytest.raises(RunRefused, match="resume=true"):
        plan_resume(True, run)
    _ckpt(run / "checkpoints", 2)
    partial = _ckpt(run / "checkpoints", 4, complete=False)
    assert plan_resume("auto", run).checkpoint == run / "checkpoints" / "checkpoint-2"
    assert plan_resume(True, run).checkpoint == run / "checkpoints" / "checkpoint-2"
    with pytest.raises(RunRefused, match="already holds"):
        plan_resume(False, run)
    with pytest.raises(RunRefused, match="incomplete"):
        plan_resume(str(partial), tmp_path / "other")
    assert plan_resume(str(run), tmp_path / "other").checkpoint == run / "checkpoints" / "checkpoint-2"
    with pytest.raises(RunRefused, match="no such"):
        plan_resume(str(tmp_path / "nope"), tmp_path / "other")
    (run / "metrics.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(RunRefused, match="already finished.*resume=false"):
        plan_resume("auto", run)
    run.with_name("run-2").mkdir()
    assert fresh_run_dir(run) == tmp_path / "run-3"


# -- the real launch.py ----------------------------------------------------------------------------------------


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def _assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def _logged_steps(run_dir: Path) -> list[int]:
    state = json.loads((run_dir / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    return [h["step"] for h in state["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, demo_dir):
    """(a) The uninterrupted run, in this process through the real job: its run dir."""
    from internvl_exp.launch.job import run_job

    out = tmp_path_factory.mktemp("resume")
    overrides = [f"paths.output_dir={out}", f"paths.demo_data_dir={demo_dir}", *RUN, "run_name=ref"]
    cfg = compose(overrides)
    run_dir = out / "default" / "ref"
    run_job(cfg, run_dir, overrides)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert checkpoints.list_checkpoints(run_dir / "checkpoints").complete == [
        run_dir / "checkpoints" / f"checkpoint-{s}" for s in (2, 4, 6)]
    return run_dir


def metrics_steps(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def _args(out: Path, demo_dir: Path, name: str) -> list[str]:
    return [f"paths.output_dir={out}", f"paths.demo_data_dir={demo_dir}", *RUN, f"run_name={name}"]


def test_killed_during_a_save_resumes_to_the_same_weights(uninterrupted, tmp_path, demo_dir):
    """(b)+(c) kill -9 while checkpoint-4 is being saved (after checkpoint-2 is complete): the re-run of the same
    command skips the partial checkpoint-4 with a warning, resumes from checkpoint-2 and ends with W."""
    args = _args(tmp_path, demo_dir, "killed")
    run_dir = tmp_path / "default" / "killed"
    sentinel = tmp_path / "held"
    env = {**os.environ, "HOLD_AT_STEP": "4", "HOLD_SENTINEL": str(sentinel)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hold_launch.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not sentinel.exists():
            assert proc.poll() is None, "the run ended before reaching checkpoint-4"
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.kill()  # SIGKILL: nothing runs after it
        proc.wait()
    found = checkpoints.list_checkpoints(run_dir / "checkpoints")
    assert found.complete == [run_dir / "checkpoints" / "checkpoint-2"]
    assert found.incomplete == [run_dir / "checkpoints" / "checkpoint-4"]
    assert (found.incomplete[0] / "model.safetensors").exists()  # everything but the marker

    res = run_launch(args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert f"skipping checkpoint {run_dir / 'checkpoints' / 'checkpoint-4'}" in log
    assert f"resuming from {run_dir / 'checkpoints' / 'checkpoint-2'}" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert metrics["resumed_from"].endswith("checkpoint-2")
    assert _logged_steps(run_dir) == [1, 2, 3, 4, 5, 6]  # continued from step 2, not restarted
    assert checkpoints.is_complete(run_dir / "checkpoints" / "checkpoint-4")  # re-saved, now complete
    _assert_same_weights(_weights(run_dir), _weights(uninterrupted))


def test_sigterm_saves_a_checkpoint_exits_143_and_resumes(uninterrupted, tmp_path, demo_dir):
    """(d) SIGTERM: a complete checkpoint at the next step, metrics.json status preempted, exit 143; the re-run
    resumes from it and ends with W, logging into the same wandb run (offline: both attempts carry its id)."""
    args = [*_args(tmp_path, demo_dir, "preempted"), "logger=wandb"]
    run_dir = tmp_path / "default" / "preempted"
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # the handlers are installed before this line is logged (train begins)
        seen.append(line)
        if "preemption: SIGTERM or SIGUSR1 saves a checkpoint" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=600)
    out = "".join(seen) + rest
    assert proc.returncode == 143, out[-3000:]
    assert "to resume: python launch.py" in out and "run_name=preempted" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "preempted" and metrics["signal"] == "SIGTERM"
    assert 1 <= metrics["steps"] < 6
    saved = Path(metrics["checkpoint"])
    assert saved == run_dir / "checkpoints" / f"checkpoint-{metrics['steps']}" and checkpoints.is_complete(saved)
    assert not (run_dir / "final").exists()

    res = run_launch(args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["resumed_from"] == str(saved)
    assert _logged_steps(run_dir) == [1, 2, 3, 4, 5, 6]
    _assert_same_weights(_weights(run_dir), _weights(uninterrupted))

    from wandb_records import read_run

    run_id = json.loads((run_dir / "wandb_run.json").read_text())["id"]
    attempts = sorted(run_dir.glob("wandb/offline-run-*"))  # timestamped: the preempted attempt first
    assert len(attempts) == 2 and all(p.name.endswith(f"-{run_id}") for p in attempts), attempts
    logged = [read_run(next(p.glob("run-*.wandb"))) for p in attempts]
    assert [r["run"].run_id for r in logged] == [run_id, run_id]
    steps = [[h["train/global_step"] for h in r["history"] if "train/loss" in h] for r in logged]
    assert steps == [list(range(1, metrics_steps(saved) + 1)), list(range(metrics_steps(saved) + 1, 7))]


def test_completed_run_refuses_and_resume_false_starts_fresh(uninterrupted, demo_dir):
    """(e) Re-running a completed run refuses (nothing touched); resume=false trains into <run_name>-2."""
    out = uninterrupted.parent.parent
    before = {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*")}
    res = run_launch(_args(out, demo_dir, "ref"))
    assert res.returncode != 0
    assert "run 'ref' already finished" in res.stderr + res.stdout and "resume=false" in res.stderr + res.stdout
    assert {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*")} == before

    quick = [a for a in _args(out, demo_dir, "ref") if not a.startswith("trainer.max_steps")]
    res = run_launch([*quick, "trainer.max_steps=1", "trainer.save_strategy=no", "resume=false"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    fresh = out / "default" / "ref-2"
    assert json.loads((fresh / "metrics.json").read_text())["status"] == "completed"
    assert (fresh / "final" / "model.safetensors").exists()
    assert {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*")} == before


def test_resume_across_an_epoch_boundary_with_augmentation(tmp_path, demo_dir):
    """The data position across epochs: 6 augmented samples (JPEG re-encoding drawn per epoch), 3 steps an
    epoch, resumed from checkpoint-4 (one step into epoch 2): the same samples and draws come next, so the
    weights equal the uninterrupted run's. (A copy of the run without its later files is what a kill leaves.)"""
    import shutil

    from internvl_exp.launch.job import run_job

    def overrides(name: str) -> list[str]:
        return [f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}", *RUN, f"run_name={name}",
                "data=mix", "~data.datasets.counting", "~data.datasets.compare", "~data.datasets.text",
                "data.datasets.shapes.repeat_time=0.125", "data.datasets.shapes.data_augment=true"]

    ref = tmp_path / "default" / "ref"
    run_job(compose(overrides("ref")), ref, overrides("ref"))
    assert json.loads((ref / "metrics.json").read_text())["epochs"] == 2.0
    cut = tmp_path / "default" / "cut"
    shutil.copytree(ref, cut)
    for p in (cut / "metrics.json", cut / "final", cut / "checkpoints" / "checkpoint-6"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    run_job(compose(overrides("cut")), cut, overrides("cut"))
    metrics = json.loads((cut / "metrics.json").read_text())
    assert metrics["resumed_from"] == str(cut / "checkpoints" / "checkpoint-4") and metrics["steps"] == 6
    _assert_same_weights(_weights(cut), _weights(ref))
