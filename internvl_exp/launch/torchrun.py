"""distributed=torchrun: the Hydra job starts the workers and waits for them (compose once, launch many).

The job has already validated and resolved the config and written it into the one run directory; the workers
(`python -m torch.distributed.run ... -m internvl_exp.launch.worker <run_dir>`) load that file without Hydra,
so they never see launch.py's argv and never compute a directory name of their own. Rank 0 writes
metrics.json; the job reads it back for its objective.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from internvl_exp.launch.signals import TORCHRUN_HANDLES, Held, hold_signals, shield
from internvl_exp.outputs import RunDir

log = logging.getLogger(__name__)


class WorkerFailure(RuntimeError):
    """The workers exited non-zero; the message is the error rank 0 recorded, when it recorded one."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_argv(d: Any, run_dir: Path) -> list[str]:
    """The torchrun command line for the `distributed` config `d` (one node: a private localhost rendezvous)."""
    # torchrun leaves SIGTERM to the workers (launch/signals.py): they save a checkpoint, it would kill them.
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={d.nproc_per_node}",
            f"--nnodes={d.nnodes}", f"--node_rank={d.node_rank}", f"--signals_to_handle={TORCHRUN_HANDLES}"]
    if d.rdzv_endpoint:
        argv += [f"--rdzv_backend={d.rdzv_backend}", f"--rdzv_endpoint={d.rdzv_endpoint}"]
        if d.rdzv_id:
            argv.append(f"--rdzv_id={d.rdzv_id}")
    else:  # one node: a port free now, so parallel sweep jobs on one machine never collide on 29500
        port = d.master_port or free_port()
        argv += ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={d.rdzv_id or port}"]
    return argv + ["-m", "internvl_exp.launch.worker", str(run_dir)]


def launch_torchrun(argv: list[str], root: str) -> tuple[int, Held]:
    """Run torchrun (`argv`) from the project root and wait: its exit status, and the preemption signal this
    process caught meanwhile (forwarded to the workers unless SLURM signalled them itself)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    for handler in logging.getLogger().handlers:  # the workers append to train.log: ours must be on disk first
        handler.flush()
    with hold_signals() as held:
        proc = subprocess.Popen(argv, cwd=root, env=env, preexec_fn=shield)
        held.workers_of = proc.pid
        try:
            return proc.wait(), held
        except KeyboardInterrupt:  # torchrun got the same Ctrl-C and stops its workers: let it
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def workers_outcome(code: int, run_dir: RunDir, what: str = "torchrun", held: Held | None = None) -> dict[str, Any]:
    """Rank 0's metrics.json after the workers exited with `code`; WorkerFailure unless they completed or were
    preempted (then metrics.json says so and the checkpoint is complete). `launcher_signal`: the signal this
    process caught meanwhile (its previous handler runs after the save: launch/signals.py pass_on)."""
    metrics = json.loads(run_dir.metrics.read_text()) if run_dir.metrics.is_file() else None
    if code != 0 and not (metrics and metrics.get("status") == "preempted"):
        if metrics and metrics.get("error"):
            raise WorkerFailure(f"a worker failed: {metrics['error']}")
        raise WorkerFailure(f"{what} exited with status {code}; the failing rank's error is on the console "
                            f"above (rank 0's log: {run_dir.log})")
    if metrics is None:
        raise WorkerFailure(f"the workers exited cleanly but rank 0 wrote no {run_dir.metrics}")
    if held is not None and held.received:
        metrics["launcher_signal"] = held.received
    return metrics


def run_workers(cfg: Any, run_dir: RunDir) -> dict[str, Any]:
    """Start the workers on `run_dir` (config.yaml already written), wait, and return rank 0's metrics."""
    argv = torchrun_argv(cfg.distributed, run_dir.root)
    log.info("starting %d worker process(es): %s", cfg.distributed.nproc_per_node * cfg.distributed.nnodes,
             " ".join(argv[1:]))
    code, held = launch_torchrun(argv, str(cfg.paths.root_dir))
    return workers_outcome(code, run_dir, held=held)

