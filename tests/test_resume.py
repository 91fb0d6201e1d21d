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

from conftest import ROOT, compose, held_launch, kill_at_hold, run_launch
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
    kill_at_hold(args, {"HOLD_AT_STEP": "4"}, tmp_path / "held")
    found = checkpoints.list_checkpoints(run_dir / "checkpoints")
    assert found.complete == [run_dir / "checkpoints" / "checkpoint-2"]
    assert found.incomplete == []  # the save happens under checkpoints/.partial/
    assert (run_dir / "checkpoints" / ".partial" / "checkpoint-4" / "model.safetensors").exists()  # all but the marker

    res = run_launch(args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert f"resuming from {run_dir / 'checkpoints' / 'checkpoint-2'}" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert metrics["resumed_from"].endswith("checkpoint-2")
    assert _logged_steps(run_dir) == [1, 2, 3, 4, 5, 6]  # continued from step 2, not restarted
    assert checkpoints.is_complete(run_dir / "checkpoints" / "checkpoint-4")  # re-saved, now complete
    _assert_same_weights(_weights(run_dir), _weights(uninterrupted))
    _assert_whole_run_summaries(metrics, uninterrupted)


def _assert_whole_run_summaries(metrics: dict, uninterrupted: Path) -> None:
    """A resumed run's summaries describe the whole run: equal to the uninterrupted run's (same losses)."""
    ref = json.loads((uninterrupted / "metrics.json").read_text())
    assert metrics["initial_loss"] == ref["initial_loss"]  # step 1's loss, trained by the first attempt
    assert metrics["final_loss"] == ref["final_loss"]
    assert metrics["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-6)
    assert metrics["loss_history"] == ref["loss_history"]
    tp, ref_tp = metrics["throughput"], ref["throughput"]
    for key in ("tokens", "supervised_tokens", "padded_tokens", "samples"):
        assert tp[key] == ref_tp[key], key
    assert tp["seconds"] > 0 and 0 < tp["tokens_per_s"] < 1e9


def test_a_second_launch_of_a_running_run_refuses_before_writing(tmp_path, demo_dir):
    """Two launches with one run_name: the second refuses in one line naming the first (host, pid) and writes
    nothing; the lock goes with the first process (kill -9), so a later launch is not blocked."""
    import socket

    args = _args(tmp_path, demo_dir, "twice")
    run_dir = tmp_path / "default" / "twice"
    with held_launch(args, {"HOLD_AT_STEP": "2"}, tmp_path / "held") as first:
        before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")}
        res = run_launch(args, timeout=300)
        assert res.returncode != 0
        out = (res.stdout + res.stderr).strip()
        assert f"run directory {run_dir} is in use by another launch" in out, out[-3000:]
        assert f"host {socket.gethostname()}, pid {first.pid}" in out
        assert "Traceback" not in out and len(res.stderr.strip().splitlines()) == 1, res.stderr[-3000:]
        assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")} == before
    from internvl_exp.launch import run_lock

    assert run_lock.acquire(run_dir)  # released by the kill
    run_lock.release(run_dir)


def test_killed_while_saving_final_resumes_and_finishes(uninterrupted, tmp_path, demo_dir):
    """kill -9 while the final model is being written (weights on disk, processor not): the run directory does not
    count as finished; the same command resumes from checkpoint-6 (saved at the last step), trains no further
    step, saves final/ completely and ends with the uninterrupted run's weights and summaries."""
    args = _args(tmp_path, demo_dir, "final_killed")
    run_dir = tmp_path / "default" / "final_killed"
    kill_at_hold(args, {"HOLD_FINAL": "1"}, tmp_path / "held")
    assert not checkpoints.is_complete(run_dir / "final")  # no complete final/ (the partial one is elsewhere)
    assert not (run_dir / "metrics.json").exists()

    res = run_launch(args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert metrics["resumed_from"] == str(run_dir / "checkpoints" / "checkpoint-6")
    assert checkpoints.verify(run_dir / "final") is None and not (run_dir / "final.partial").exists()
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "processor_config.json"):
        assert (run_dir / "final" / name).stat().st_size > 0, name
    _assert_same_weights(_weights(run_dir), _weights(uninterrupted))
    _assert_whole_run_summaries(metrics, uninterrupted)


def test_resume_from_a_checkpoint_of_the_last_step_trains_no_more(uninterrupted, tmp_path, demo_dir):
    """resume=<checkpoint-6> of a 6-step run: nothing is left to train; final/ is the checkpoint's model (not one
    step further) and the summaries are the checkpoint's run's."""
    from internvl_exp.launch.job import run_job

    overrides = [*_args(tmp_path, demo_dir, "from_last"), f"resume={uninterrupted / 'checkpoints' / 'checkpoint-6'}"]
    run_dir = tmp_path / "default" / "from_last"
    run_job(compose(overrides), run_dir, overrides)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert [h["step"] for h in metrics["loss_history"]] == [1, 2, 3, 4, 5, 6]
    _assert_same_weights(_weights(run_dir), _weights(uninterrupted))
    _assert_whole_run_summaries(metrics, uninterrupted)


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


def _copy_without_end(src: Path, dst: Path, drop_checkpoints: tuple[int, ...] = ()) -> None:
    """A copy of a finished run without its metrics.json and final/ (what a kill after the last checkpoint
    leaves), minus the given checkpoints."""
    import shutil

    shutil.copytree(src, dst)
    shutil.rmtree(dst / "final")
    (dst / "metrics.json").unlink()
    for step in drop_checkpoints:
        shutil.rmtree(dst / "checkpoints" / f"checkpoint-{step}")


def test_damaged_checkpoints_are_skipped_naming_the_file(uninterrupted, tmp_path, demo_dir, caplog):
    """The newest checkpoint truncated, the next one without optimizer.pt: the re-run names both files, falls back
    to checkpoint-2 and ends with the uninterrupted run's weights. A flipped byte is caught by the checksum."""
    from internvl_exp.launch.job import run_job

    run_dir = tmp_path / "default" / "damaged"
    _copy_without_end(uninterrupted, run_dir)
    ckpts = run_dir / "checkpoints"
    weights6 = ckpts / "checkpoint-6" / "model.safetensors"
    os.truncate(weights6, weights6.stat().st_size // 2)
    (ckpts / "checkpoint-4" / "optimizer.pt").unlink()

    overrides = _args(tmp_path, demo_dir, "damaged")
    with caplog.at_level(logging.WARNING):
        run_job(compose(overrides), run_dir, overrides)
    assert f"skipping checkpoint {ckpts / 'checkpoint-6'}: {weights6} has" in caplog.text
    assert f"{ckpts / 'checkpoint-4' / 'optimizer.pt'} is missing" in caplog.text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["resumed_from"] == str(ckpts / "checkpoint-2")
    _assert_same_weights(_weights(run_dir), _weights(uninterrupted))
    assert checkpoints.verify(ckpts / "checkpoint-6") is None  # saved again, whole

    # A flipped byte (same size) in a copy of checkpoint-2: found by the checksum, named; resume=<it> refuses.
    flipped = tmp_path / "elsewhere" / "checkpoints" / "checkpoint-2"
    import shutil

    shutil.copytree(ckpts / "checkpoint-2", flipped)
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / "model.safetensors").write_bytes(bytes(data))
    assert "does not match its checksum" in checkpoints.verify(flipped)
    assert checkpoints.verify(flipped, checksums=False) is None  # the size alone cannot see it
    with pytest.raises(RunRefused, match=r"damaged: .*checkpoint-2/model.safetensors does not match"):
        plan_resume(str(flipped), tmp_path / "other")


def test_changed_settings_on_resume_refuse_or_apply_and_keep_the_history(uninterrupted, tmp_path, demo_dir,
                                                                          caplog):
    """Before anything is written: a changed lr and freeze refuse (both named, config.yaml untouched); a changed
    logging interval applies, is listed, and the earlier config.yaml is kept as config.attempt-1.yaml."""
    from internvl_exp.launch.job import run_job

    run_dir = tmp_path / "default" / "changed"
    _copy_without_end(uninterrupted, run_dir)
    config_before = (run_dir / "config.yaml").read_text()
    base = _args(tmp_path, demo_dir, "changed")
    refused = [*base, "optimizer.lr=3e-4", "freeze=llm"]
    with pytest.raises(SystemExit) as e:
        run_job(compose(refused), run_dir, refused)
    message = str(e.value)
    assert "cannot apply to a resumed run" in message and "optimizer.lr (" in message and "optimizer.lr (0.002 -> 0.0003)" in message
    assert "freeze.parts.llm (full -> frozen)" in message and "freeze.name (vision -> llm)" in message
    assert (run_dir / "config.yaml").read_text() == config_before
    assert not (run_dir / "metrics.json").exists() and not list(run_dir.glob("config.attempt-*"))

    applied = [*base, "trainer.logging_steps=2"]
    with caplog.at_level(logging.WARNING):
        run_job(compose(applied), run_dir, applied)
    assert "changed settings apply from its step on: trainer.logging_steps (1 -> 2)" in caplog.text
    assert (run_dir / "config.attempt-1.yaml").read_text() == config_before
    assert "logging_steps: 2" in (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_failed_write_during_a_checkpoint_save_is_one_line(uninterrupted, tmp_path, demo_dir):
    """The kernel refuses a write midway through the first checkpoint (a file-size limit, RLIMIT_FSIZE: the same
    failed write(2) as a full disk, on real files): the run ends with one line naming the checkpoint, what
    happened and what to do, no traceback on the console, and the partial checkpoint is never trusted."""
    import resource

    ckpt = uninterrupted / "checkpoints" / "checkpoint-2"
    run_files = [p for p in uninterrupted.rglob("*") if p.is_file() and "checkpoints" not in p.parts
                 and "final" not in p.parts]
    limit = 4 * max(p.stat().st_size for p in run_files)  # the log, config and metrics fit
    assert limit < (ckpt / "optimizer.pt").stat().st_size, "the limit must stop the checkpoint"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run_dir = tmp_path / "default" / "full"
    res = subprocess.run([sys.executable, str(ROOT / "launch.py"), *_args(tmp_path, demo_dir, "full")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, preexec_fn=small_files)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    line = next(l for l in res.stderr.splitlines() if l.startswith("run failed: SaveFailed"))
    assert f"could not save checkpoint checkpoint-2 to {run_dir / 'checkpoints' / 'checkpoint-2'}" in line, line
    assert "a file hit the size limit" in line and "ulimit -f unlimited" in line and "re-run the same command" in line
    found = checkpoints.list_checkpoints(run_dir / "checkpoints")
    assert found.complete == [] and found.incomplete == []  # the partial save is under checkpoints/.partial/
    assert json.loads((run_dir / "metrics.json").read_text())["error_type"] == "SaveFailed"


def test_an_unwritable_output_folder_is_one_line(tmp_path, demo_dir):
    """A run directory that cannot be made (here a file stands where a folder should: the tests run as root, for
    whom permissions do not bite; a read-only folder takes the same path) ends in one line, before any work."""
    (tmp_path / "taken").write_text("a file")
    res = run_launch([f"paths.output_dir={tmp_path / 'taken' / 'out'}", f"paths.demo_data_dir={demo_dir}",
                      "run_name=nowhere"], timeout=300)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (f"cannot write the run directory {tmp_path / 'taken' / 'out' / 'default' / 'nowhere'}: "
                                  "Not a directory; point paths.output_dir at a writable folder"), res.stderr[-2000:]


def test_which_changed_settings_refuse_a_resume():
    """The rules of train/checkpointing/resume_config.py on plain dicts: names, paths and the resume key are not compared; the
    number of processes may change unless the checkpoint is sharded by DeepSpeed."""
    from internvl_exp.train.checkpointing.resume_config import compare

    old = {"run_name": "a", "paths": {"output_dir": "/x"}, "resume": "auto", "deepspeed": {"stage": None},
           "distributed": {"nproc_per_node": 2}, "optimizer": {"lr": 1e-5, "max_grad_norm": 1.0},
           "trainer": {"logging_steps": 10, "max_steps": 100}}
    new = {**old, "run_name": "b", "paths": {"output_dir": "/y"}, "resume": "/x/a",
           "distributed": {"nproc_per_node": 4}, "optimizer": {"lr": 1e-5, "max_grad_norm": 0.5},
           "trainer": {"logging_steps": 5, "max_steps": 200}}
    refused, applied = compare(new, old)
    assert refused == ["trainer.max_steps (100 -> 200)"]
    assert applied == ["distributed.nproc_per_node (2 -> 4)", "optimizer.max_grad_norm (1.0 -> 0.5)",
                       "trainer.logging_steps (10 -> 5)"]
    zero = {**new, "deepspeed": {"stage": 2}}
    refused, _ = compare(zero, {**old, "deepspeed": {"stage": 2}})
    assert "distributed.nproc_per_node (2 -> 4)" in refused


def test_the_launch_decides_the_resume_plan_once(tmp_path):
    # The Hydra callback decides before the directory is opened and keeps the plan; the job takes that same plan
    # (no second look at the files); the next launch decides afresh and sees what happened since.
    import json

    from internvl_exp.train.checkpointing.resume import RunRefused, launch_plan

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = launch_plan("auto", run_dir, keep=True)
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed"}))  # the run finishes meanwhile
    assert launch_plan("auto", run_dir) is first  # the job's plan is the callback's
    with pytest.raises(RunRefused, match="already finished"):
        launch_plan("auto", run_dir)  # a later launch looks again
