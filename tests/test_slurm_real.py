"""distributed=slurm against a real scheduler: a single-node SLURM (slurmctld + slurmd + munge, no accounting)
started on this machine by .ci/slurm.sh (as root; it installs the Debian packages if missing) for this module,
and stopped after it when this module started it. Where it cannot run (not root, no apt-get, a real cluster's
slurm.conf) every test here is skipped with that reason (`pytest -rs` prints it; `make test` does).

The tiny model on CPU with 2 processes per node; what tests/test_slurm.py cannot show with a fake sbatch:
submission and the job's states, requeue and resume through `scontrol requeue`, scancel, a signal during the
workers' start-up, Ctrl-C on the submitting side, the run lock across the submitter's exit, jobs that can never
start, sbatch's refusals, and a submitit sweep."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_launch

pytestmark = pytest.mark.slow

SCRIPT = ROOT / ".ci" / "slurm.sh"


@pytest.fixture(scope="module")
def slurm():
    """A running single-node SLURM, or a skip that says why there is none."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("real SLURM tests need root to start a single-node SLURM (.ci/slurm.sh up); run the suite as "
                    "root (CI does)")
    up = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=900)
    if up.returncode == 3:  # the script's "this machine cannot have it"
        pytest.skip(f"no single-node SLURM here: {up.stderr.strip()}")
    assert up.returncode == 0, up.stdout + up.stderr
    yield
    if up.stdout.strip() == "started":  # ours to stop; one that was up already is left as it was
        subprocess.run([str(SCRIPT), "down"], capture_output=True, text=True, timeout=120)


def _queued() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())


@pytest.fixture(autouse=True)
def _cancel_leftovers(slurm):
    """A test that fails midway leaves no job of its own queued or running for the next one."""
    before = _queued()
    yield
    left = sorted(_queued() - before)
    if left:
        subprocess.run(["scancel", *left], capture_output=True)


def _args(tmp_path: Path, demo_dir: Path, name: str, *extra: str) -> list[str]:
    return [f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}", f"run_name={name}",
            "distributed=slurm", "distributed.gpus_per_node=0", "distributed.nproc_per_node=2", "distributed.time=10",
            "trainer.per_device_train_batch_size=2", "trainer.logging_steps=1", *extra]


def _launch(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def _wait(what: str, check, proc: subprocess.Popen | None = None, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"launch ended (status {proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _reason(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True)
    return out.stdout.strip()


def _finish_requeued(proc: subprocess.Popen, job_id: str, timeout: float = 300) -> str:
    """Wait for the launch while its job is requeued: SLURM holds a requeued job for ~2 minutes (BeginTime);
    the test lets it start 2 s after the requeue, as an idle cluster would after that delay. Not at once: slurmd
    refuses a job started within the second its previous run was killed ("Job 85 already killed, do not launch
    batch job"; the job then fails with "Job credential revoked"), which failed this test in CI."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _reason(job_id) == "PENDING BeginTime":
            time.sleep(2)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
        time.sleep(0.5)
    return _finish(proc, timeout=max(1.0, deadline - time.monotonic()))


def _job_id(run_dir: Path, proc: subprocess.Popen) -> str:
    record = run_dir / ".slurm_job"
    return _wait("the submission", lambda: record.is_file() and record.read_text().strip(), proc)


def _node_logs(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((run_dir / "submitit").rglob("*_log.*")))


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out


def test_cpu_cluster_two_processes_per_node(slurm, tmp_path, demo_dir):
    """distributed.gpus_per_node=0: a CPU cluster, 2 processes on the node, no GPU asked for; the job's states
    are shown while waiting, and sacct's failure (no accounting) is not repeated at every poll."""
    res = run_launch(_args(tmp_path, demo_dir, "cpu", "trainer.max_steps=2", "trainer.save_strategy=no"),
                     timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    run_dir = tmp_path / "default" / "cpu"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 2
    assert metrics["throughput"]["world_size"] == 2
    job_id = (run_dir / ".slurm_job").read_text().strip()
    (script,) = (run_dir / "submitit").rglob("*_submission.sh")
    text = script.read_text()
    assert "#SBATCH --ntasks-per-node=1" in text and "gpus" not in text  # no GPU request on a CPU cluster
    assert f"SLURM job {job_id}: RUNNING on " in out
    assert "Bypassing sacct error" not in out


@pytest.mark.parametrize("delay_s", [2.0, 0.3])
def test_signal_during_worker_start_up_requeues_and_resumes(slurm, tmp_path, demo_dir, delay_s):
    """`scancel --signal=USR1` 2 s after the job starts (the workers are still importing), or 0.3 s (the node
    task is): the job is requeued, not failed, and the requeued job finishes the run from the checkpoint saved at
    the first step (or, had nothing been saved, from the start)."""
    run_dir = tmp_path / "default" / "early"
    proc = _launch(_args(tmp_path, demo_dir, "early", "trainer.max_steps=4", "trainer.save_steps=100"))
    job_id = _job_id(run_dir, proc)
    _wait("the job to run", lambda: _state(job_id) == "RUNNING", proc)
    time.sleep(delay_s)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    out = _finish_requeued(proc, job_id)
    logs = _node_logs(run_dir)
    assert proc.returncode == 0, out[-3000:] + logs[-3000:]
    assert f"requeued SLURM job {job_id}" in logs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 4
    if metrics.get("resumed_from"):  # saved at the first step, where the workers acted on the early signal
        assert re.search(r"preemption: SIGUSR1 received; saving a checkpoint at step 1\b", logs)
        assert metrics["resumed_from"].endswith("checkpoint-1")
    else:  # the signal came before the workers started: not started, requeued at once
        assert "SIGUSR1 arrived before the workers started" in logs


def test_usr1_mid_training_requeues_and_resumes(slurm, tmp_path, demo_dir):
    """The signal of `--signal=USR1@<s>` before the time limit, mid-training: a checkpoint, a requeue, and the
    requeued job resumes from it to the end; the submitting command just keeps waiting."""
    run_dir = tmp_path / "default" / "mid"
    proc = _launch(_args(tmp_path, demo_dir, "mid", "trainer.max_steps=100", "trainer.save_steps=1000"))
    job_id = _job_id(run_dir, proc)
    log = run_dir / "train.log"
    _wait("training", lambda: log.is_file() and "saves a checkpoint at the next step" in log.read_text(), proc)
    time.sleep(0.5)  # some steps in (the tiny model: ~30 steps/s)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    out = _finish_requeued(proc, job_id)
    logs = _node_logs(run_dir)
    assert proc.returncode == 0, out[-3000:] + logs[-3000:]
    saved = re.search(r"preemption: SIGUSR1 received; saving a checkpoint at step (\d+)", logs)
    assert saved and f"requeued SLURM job {job_id}" in logs, logs[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 100
    assert metrics["resumed_from"].endswith(f"checkpoint-{saved[1]}")


def test_ctrl_c_leaves_the_job_scancel_stops_it(slurm, tmp_path, demo_dir):
    """Ctrl-C on the submitting command: it says the job keeps running and how to follow or stop it, with no
    resume command; a second launch into the same run directory is refused while the job lives; `scancel`
    (SIGTERM) stops the job with a checkpoint and does not requeue it."""
    args = _args(tmp_path, demo_dir, "cc", "trainer.max_steps=5000", "trainer.save_steps=100000")
    run_dir = tmp_path / "default" / "cc"
    proc = _launch(args)
    job_id = _job_id(run_dir, proc)
    log = run_dir / "train.log"
    _wait("training", lambda: log.is_file() and "saves a checkpoint at the next step" in log.read_text(), proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's process group
    out = _finish(proc, timeout=60)
    assert proc.returncode == 130, out[-3000:]
    assert f"SLURM job {job_id} keeps running" in out and f"scancel {job_id}" in out
    assert "to resume" not in out and "Traceback" not in out, out[-3000:]
    assert _state(job_id) == "RUNNING"

    again = run_launch(args, timeout=120)
    assert again.returncode != 0
    assert f"is in use by SLURM job {job_id} (RUNNING)" in again.stdout + again.stderr

    subprocess.run(["scancel", job_id], check=True)
    _wait("the job to end", lambda: _state(job_id) not in ("RUNNING", "COMPLETING", ""), timeout=120)
    time.sleep(3)  # a requeue would show as PENDING now
    assert _state(job_id) == "CANCELLED"
    metrics = _wait("metrics.json", lambda: (run_dir / "metrics.json").is_file() and
                    json.loads((run_dir / "metrics.json").read_text()))
    assert metrics["status"] == "preempted" and metrics["signal"] == "SIGTERM", metrics
    assert Path(metrics["checkpoint"]).is_dir()
    assert "requeued SLURM job" not in _node_logs(run_dir)


def test_scancel_during_start_up_stops_at_once_without_requeue(slurm, tmp_path, demo_dir):
    """`scancel` (SIGTERM) while the job starts: the node task stops before starting its workers, or the workers
    stop at their first step with a checkpoint; either way the job is not requeued, and the launch, which cannot
    ask sacct on a cluster without accounting, sees it end through squeue and exits 143 with the resume command
    (the job has ended) instead of waiting out SLURM's KillWait or forever."""
    run_dir = tmp_path / "default" / "sc0"
    proc = _launch(_args(tmp_path, demo_dir, "sc0", "trainer.max_steps=5000"))
    job_id = _job_id(run_dir, proc)
    _wait("the job to run", lambda: _state(job_id) == "RUNNING", proc)
    time.sleep(0.3)
    subprocess.run(["scancel", job_id], check=True)
    out = _finish(proc, timeout=120)
    logs = _node_logs(run_dir)
    assert proc.returncode == 143, out[-3000:] + logs[-3000:]
    assert ("SIGTERM arrived before the workers started" in logs
            or "SIGTERM received; saving a checkpoint at step 1 " in logs), logs[-3000:]
    assert "requeued SLURM job" not in logs
    assert f"SLURM job {job_id}: CANCELLED" in out and "run preempted by SIGTERM" in out
    assert "to resume: python launch.py" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "preempted" and metrics["signal"] == "SIGTERM"
    time.sleep(3)  # a requeue would show as PENDING now
    assert _state(job_id) == "CANCELLED"


def test_job_that_can_never_start_is_reported_and_cancelled(slurm, tmp_path, demo_dir):
    """distributed.nodes=2 on a 1-node partition: PENDING (PartitionNodeLimit) forever; the launch says so in
    one line, cancels the job and leaves no run directory."""
    res = run_launch(_args(tmp_path, demo_dir, "never", "distributed.nodes=2"), timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    # SLURM 22.05 says PartitionConfig or PartitionNodeLimit here, depending on when its scheduler looked.
    job_id = re.search(r"SLURM job (\d+) can never start: it is pending with reason Partition(Config|NodeLimit)", out)
    assert job_id, out[-3000:]
    assert "Traceback" not in out and "to resume" not in out
    assert _state(job_id[1]) in ("CANCELLED", "")
    assert not (tmp_path / "default" / "never").exists()


def test_bad_partition_is_one_line_and_no_run_directory(slurm, tmp_path, demo_dir):
    res = run_launch(_args(tmp_path, demo_dir, "badpart", "distributed.partition=nope"), timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    (line,) = [x for x in out.splitlines() if "sbatch refused the job" in x]
    assert "invalid partition specified: nope" in line and "distributed.partition" in line
    assert "Traceback" not in out and "to resume" not in out
    assert not (tmp_path / "default").exists()


def test_submitit_sweep_two_points(slurm, tmp_path, demo_dir):
    """`-m hydra/launcher=submitit_slurm` with two points: two SLURM jobs, each a Hydra job on the node."""
    res = run_launch(["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10",
                      "hydra.launcher.cpus_per_task=1", f"paths.output_dir={tmp_path}",
                      f"paths.demo_data_dir={demo_dir}", "trainer.max_steps=2", "trainer.save_strategy=no",
                      "trainer.per_device_train_batch_size=2", "optimizer.lr=1e-3,2e-3"], timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    jobs = sorted(tmp_path.glob("default/multirun/*/[01]_*/metrics.json"))
    assert len(jobs) == 2, out[-3000:]
    lrs = set()
    for path in jobs:
        metrics = json.loads(path.read_text())
        assert metrics["status"] == "completed" and metrics["steps"] == 2
        lrs.add(__import__("yaml").safe_load((path.parent / "config.yaml").read_text())["optimizer"]["lr"])
    assert lrs == {1e-3, 2e-3}
    assert "Bypassing sacct error" not in out
    assert shutil.which("squeue")
