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

from internvl_exp.config.schema import Config
from internvl_exp.launch.signals import TORCHRUN_HANDLES, Held, hold_signals, shield
from internvl_exp.outputs import RunDir

log = logging.getLogger(__name__)


class WorkerFailure(RuntimeError):
    """The workers exited non-zero; the message names the failed rank and what ended it (failure_headline)."""

    one_line = True  # job.py prints the message alone: the launcher's own traceback says nothing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_argv(d: Any, run_dir: Path) -> list[str]:
    """The torchrun command line for the `distributed` config `d` (one node: a private localhost rendezvous)."""
    # torchrun leaves SIGTERM to the workers (launch/signals.py): they save a checkpoint, it would kill them.
    # launch/agent.py: torchrun itself, which records how each failed worker ended for workers_outcome.
    argv = [sys.executable, "-m", "internvl_exp.launch.agent", f"--nproc_per_node={d.nproc_per_node}",
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


# What a signal that ended a worker usually means, and what to do.
SIGNAL_CAUSES = {
    "SIGKILL": "often the kernel's out-of-memory killer (see `dmesg` or the job's memory report) or a `kill -9`",
    "SIGSEGV": "a crash in native code (a CUDA/NCCL or extension bug; the rank's console lines above show where)",
    "SIGBUS": "a crash reading memory (often /dev/shm too small for the data loader or NCCL)",
    "SIGABRT": "an abort in native code (CUDA, NCCL or a C++ assertion; the rank's console lines above say which)",
    "SIGTERM": "a SIGTERM sent to that process alone (the run saves on SIGTERM only when the launcher or every "
               "rank gets it)",
}
FIRST_OBSERVED_S = 5  # failures later than this after the first are the agent stopping the others


def failure_headline(run_dir: RunDir) -> str | None:
    """The worker failure to report first, from the agents' records (launch/agent.py): a rank killed by a signal,
    else the first rank's own message; None when no agent recorded one."""
    records = []
    for path in sorted((run_dir.root / "worker_failures").glob("node*.json")):
        try:
            records += json.loads(path.read_text())["failures"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not records:
        return None
    t0 = min(r["timestamp"] for r in records)
    # A rank killed by a signal (other than SIGTERM: the agent's own, when it stops the others) is the cause;
    # else a rank's own message (launch/worker.py: the ranks that stopped answering); else an exit status.
    first = sorted((r for r in records if r["timestamp"] <= t0 + FIRST_OBSERVED_S),
                   key=lambda r: (0 if r["signal"] not in (None, "SIGTERM") else 1 if r["message"] else 2,
                                  r["timestamp"], r["rank"]))
    r = first[0]
    where = f"rank {r['rank']} (node {r['node_rank']}, local rank {r['local_rank']}, pid {r['pid']})"
    if r["signal"]:
        cause = SIGNAL_CAUSES.get(r["signal"], "a signal from outside the run")
        return f"{where} was killed by {r['signal']}: {cause}; the other ranks were stopped"
    if r["message"]:
        own = r["message"].removeprefix("PeerLost: ")  # launch/worker.py's line already names the ranks
        return own if own.startswith(f"rank {r['rank']}:") else f"{where} failed: {r['message']}"
    return f"{where} exited with status {r['exitcode']}"


def workers_outcome(code: int, run_dir: RunDir, what: str = "torchrun", held: Held | None = None) -> dict[str, Any]:
    """Rank 0's metrics.json after the workers exited with `code`; WorkerFailure unless they completed or were
    preempted (then metrics.json says so and the checkpoint is complete). `launcher_signal`: the signal this
    process caught meanwhile (its previous handler runs after the save: launch/signals.py pass_on). The failure
    names the rank at fault as the agents recorded it (a rank killed by a signal, or the ranks that stopped
    answering), not the survivors' "Connection reset by peer"."""
    metrics = json.loads(run_dir.metrics.read_text()) if run_dir.metrics.is_file() else None
    if code != 0 and not (metrics and metrics.get("status") == "preempted"):
        headline = failure_headline(run_dir)
        if headline:
            raise WorkerFailure(headline)
        if metrics and metrics.get("error"):
            raise WorkerFailure(f"a worker failed: {metrics['error']}")
        raise WorkerFailure(f"{what} exited with status {code}; the failing rank's error is on the console "
                            f"above (rank 0's log: {run_dir.log})")
    if metrics is None:
        raise WorkerFailure(f"the workers exited cleanly but rank 0 wrote no {run_dir.metrics}")
    if held is not None and held.received:
        metrics["launcher_signal"] = held.received
    return metrics


def run_workers(cfg: Config, run_dir: RunDir) -> dict[str, Any]:
    """Start the workers on `run_dir` (config.yaml already written), wait, and return rank 0's metrics."""
    argv = torchrun_argv(cfg.distributed, run_dir.root)
    log.info("starting %d worker process(es): %s", cfg.distributed.nproc_per_node * cfg.distributed.nnodes,
             " ".join(argv[1:]))
    code, held = launch_torchrun(argv, str(cfg.paths.root_dir))
    return workers_outcome(code, run_dir, held=held)

