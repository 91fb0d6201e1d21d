"""What a person sees on the console, through the real launch.py (no mocks): one readable line per log step,
the last step always logged, no warnings that are not the user's to act on, the run directory once, the chat
command at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT


def _launch(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """launch.py with stdout and stderr interleaved as on a terminal (so a line glued to the bar shows)."""
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def test_console_lines_and_last_step_logged(tmp_path, demo_dir):
    # max_steps < logging_steps: the Trainer alone would log step 1 only.
    res = _launch([f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}", "run_name=c",
                   "trainer.max_steps=3", "trainer.logging_steps=10", "trainer.eval_strategy=no"])
    out = res.stdout
    assert res.returncode == 0, out[-3000:]
    metrics = json.loads((tmp_path / "default" / "c" / "metrics.json").read_text())
    history = metrics["loss_history"]
    assert [h["step"] for h in history] == [1, 3]
    assert metrics["best_loss"] == min(h["loss"] for h in history)
    # One line per log step, the numbers as numbers; the Trainer's dicts are gone.
    lines = re.findall(r"step (\d)/3  loss (\d+\.\d{4})  lr \S+  grad \S+", out)
    assert [int(s) for s, _ in lines] == [1, 3], out[-3000:]
    assert abs(float(lines[-1][1]) - history[-1]["loss"]) < 1e-4
    assert "{'loss'" not in out and "'train_runtime'" not in out
    assert "Setting accelerator to CPU" not in out  # DeepSpeed's, with deepspeed=none
    assert "Writing model shards" not in out
    assert "compiling its C++ op" not in out  # deepspeed=none builds nothing
    # The note logged when training begins starts its own line (not glued to the progress bar).
    before = out[: out.index("preemption: SIGTERM or SIGUSR1")].rsplit("\n", 1)[-1]
    assert "it/s]" not in before and "%|" not in before, before
    assert out.count("Run directory:") == 1
    assert f"chat with it: python -m internvl_exp.tools.chat {tmp_path / 'default' / 'c'}" in out


@pytest.fixture
def start():
    """Start launch.py ARGS (stdout and stderr interleaved); whatever is still running at the end is killed."""
    procs = []

    def _start(args: list[str]) -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
        return procs[-1]

    yield _start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _until(proc: subprocess.Popen, text: str) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError("".join(seen)[-3000:])


@pytest.mark.slow  # 2 processes, or a signal-driven end-to-end run (make test-fast leaves it out)
def test_ctrl_c_saves_and_prints_the_resume_command_a_second_stops_at_once(tmp_path, demo_dir, start):
    from internvl_exp.train.checkpointing import checkpoints

    common = [f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}", "trainer.max_steps=100000",
              "trainer.logging_steps=1000", "trainer.eval_strategy=no"]
    proc = start([*common, "run_name=once"])
    out = _until(proc, "preemption: SIGTERM or SIGUSR1 saves")  # logged when training begins
    assert "so does Ctrl-C (press it again to stop at once)" in out
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)
    out += rest
    assert proc.returncode == 143, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "to resume: python launch.py" in out and "run_name=once" in out
    metrics = json.loads((tmp_path / "default" / "once" / "metrics.json").read_text())
    assert metrics["status"] == "preempted" and metrics["signal"] == "SIGINT"
    assert checkpoints.is_complete(Path(metrics["checkpoint"]))

    proc = start([*common, "run_name=twice"])
    out = _until(proc, "preemption: SIGTERM or SIGUSR1 saves")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)  # 100000 steps: only stopping at once ends it in time
    out += rest
    assert proc.returncode == -signal.SIGINT, out[-3000:]
    assert "SIGINT again: stopping now, without a checkpoint" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert not (tmp_path / "default" / "twice" / "final").exists()


def test_deepspeed_first_cpu_run_says_it_compiles_an_op_once(tmp_path, demo_dir, start):
    """A fresh cache: the note comes before the (minutes-long, silent) build starts; the run is stopped there."""
    proc = start([f"paths.output_dir={tmp_path / 'out'}", f"paths.demo_data_dir={demo_dir}",
                  f"paths.cache_dir={tmp_path / 'cache'}", "deepspeed=zero2", "trainer.max_steps=1"])
    out = _until(proc, "DeepSpeed on CPU: compiling its C++ op")
    line = out.splitlines()[-1]
    assert f"deepspeed_shm_comm now, once per machine (~1-3 min; cached in {tmp_path / 'cache' / 'torch_extensions'}" \
           in line, line
    assert "built successfully" not in out  # said before the build, not after
