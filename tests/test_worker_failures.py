"""distributed=torchrun on CPU, 2 real worker processes, one of them signalled from outside (no mocks): a rank
that dies is named with its signal, a rank that stops answering is named after distributed.timeout_s instead
of hanging the job, and no survivor's traceback or torchrun banner reaches the console."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from conftest import ROOT

STALL_TIMEOUT_S = 20


@pytest.fixture
def launched(tmp_path, demo_dir):
    """Start a long 2-rank DDP run; yields (proc, lines so far, rank 1's worker process) once step 5 is logged."""
    procs = []

    def start(name: str):
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}",
             f"run_name={name}", "distributed=torchrun", "distributed.nproc_per_node=2",
             f"distributed.timeout_s={STALL_TIMEOUT_S}", "trainer.max_steps=100000", "trainer.logging_steps=5",
             "trainer.eval_strategy=no", "trainer.per_device_train_batch_size=1"],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        procs.append(proc)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "step 5/100000" in line:
                break
        else:
            raise AssertionError("".join(seen)[-3000:])
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "internvl_exp.launch.worker" in " ".join(p.cmdline()) and p.environ().get("RANK") == "1"]
        assert len(workers) == 1
        return proc, "".join(seen), workers[0]

    yield start
    for proc in procs:
        for child in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
            child.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _finish(proc, before: str) -> tuple[str, str]:
    """(whole console, the launcher's final error line) once the launch has exited."""
    rest, _ = proc.communicate(timeout=300)  # 100000 steps: only the failure ends it in time
    out = before + rest
    assert proc.returncode == 1, out[-3000:]
    headline = next(line for line in out.splitlines() if line.startswith("run failed: WorkerFailure: "))
    return out, headline


def _quiet(out: str) -> None:
    assert "Traceback" not in out and "ChildFailedError" not in out and "Connection reset by peer" not in out
    assert "find_unused_parameters" not in out  # DDP's warning: every rank runs the same graph


@pytest.mark.slow  # 2 processes, or a signal-driven end-to-end run (make test-fast leaves it out)
def test_a_killed_rank_is_named_with_its_signal(launched, tmp_path):
    proc, before, worker = launched("killed")
    worker.send_signal(signal.SIGKILL)
    out, headline = _finish(proc, before)
    assert f"rank 1 (node 0, local rank 1, pid {worker.pid}) was killed by SIGKILL: often the kernel's " \
           "out-of-memory killer" in headline, headline
    assert "to resume" in out
    _quiet(out)
    metrics = json.loads((tmp_path / "default" / "killed" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "rank 1" in metrics["error"] and "SIGKILL" in metrics["error"]


@pytest.mark.slow  # 2 processes, or a signal-driven end-to-end run (make test-fast leaves it out)
def test_a_stalled_rank_is_named_after_the_collective_timeout(launched, tmp_path):
    proc, before, worker = launched("stalled")
    worker.send_signal(signal.SIGSTOP)  # alive, never answers: the job would hang for gloo's 30 min default
    try:
        out, headline = _finish(proc, before)
    finally:
        if worker.is_running():
            worker.kill()
    assert headline.startswith(f"run failed: WorkerFailure: rank 0: waited distributed.timeout_s={STALL_TIMEOUT_S} "
                               "s in a collective for rank 1, which stopped answering"), headline
    assert "kill -USR2 <pid>" in headline and "raise distributed.timeout_s" in headline
    # The surviving rank said it in one line on the console as well, without a traceback.
    assert f"rank 0: waited distributed.timeout_s={STALL_TIMEOUT_S} s in a collective for rank 1, which stopped " \
           "answering\n" in out
    _quiet(out)


@pytest.mark.slow  # 2 processes, or a signal-driven end-to-end run (make test-fast leaves it out)
def test_ctrl_c_saves_on_every_rank_and_two_sigterms_stop_at_once(launched, tmp_path):
    from pathlib import Path

    from internvl_exp.train.checkpointing import checkpoints

    proc, before, _ = launched("ctrlc")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: every process of the group gets it
    rest, _ = proc.communicate(timeout=300)
    out = before + rest
    assert proc.returncode == 143, out[-3000:]
    assert "to resume: python launch.py" in out and "Traceback" not in out and "KeyboardInterrupt" not in out
    metrics = json.loads((tmp_path / "default" / "ctrlc" / "metrics.json").read_text())
    assert metrics["status"] == "preempted" and metrics["signal"] == "SIGINT"
    assert checkpoints.is_complete(Path(metrics["checkpoint"]))

    proc, before, worker = launched("twice")
    tree = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)  # a scheduler signals the launcher, then insists
    import time

    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)  # 100000 steps: only stopping at once ends it in time
    out = before + rest
    assert proc.returncode == -signal.SIGTERM, out[-3000:]
    assert "SIGTERM again: stopping the workers now, without a checkpoint" in out
    psutil.wait_procs(tree, timeout=30)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # torchrun, workers gone
    assert not (tmp_path / "default" / "twice" / "final").exists()
