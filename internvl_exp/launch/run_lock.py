"""One launch per run directory: an exclusive lock on `<run_dir>/.run.lock`, held for the run's life.

Two launches with the same run_name would otherwise train into one directory together: one's checkpoint
retention deletes the other's folder mid-save, and config.yaml, metrics.json and final/ come from different
runs. The launching process takes the lock before it writes anything (Hydra's RunGuard, or run_job when called
directly) and keeps it until the run ends or the process dies: it is a flock(2) lock, which the kernel releases
with the process (kill -9 included), so a stale lock file never blocks a re-run. torchrun workers are its
children and need no lock of their own. The file records who holds it (host, pid, start time) for the message
a second launch prints. flock works on local filesystems and on NFSv4/Lustre/GPFS mounts that support it; on
a filesystem without locks the launch goes ahead with a warning. A distributed=slurm run records its job id in
the directory (`.slurm_job`): while squeue says that job is queued or running, a launch is refused too, on any
host, whether or not the submitting process still waits for it.

Light: standard library only (imported by the Hydra callback).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

from internvl_exp.dist import is_main_process
from internvl_exp.errors import UserError
from internvl_exp.launch.slurm_queue import live_job

log = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
_held: dict[str, int] = {}  # resolved run directory -> the open lock file's descriptor


class RunLocked(UserError):
    """Another launch holds the run directory."""


class RunDirUnwritable(UserError):
    """The run directory cannot be created or written (read-only folder, a file in the way)."""


def acquire(run_dir: Path) -> bool:
    """Lock `run_dir` (created if needed) for this process. True if this call took the lock, False if this
    process already held it. Raises RunLocked, naming the holder, when another process holds it."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _held or not is_main_process():
        # A non-main rank of launch.py run under a torchrun of the user's own is part of rank 0's launch,
        # which holds the lock for all of them.
        return False
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no truncation: the holder's record stays readable
    except OSError as e:
        where = "" if e.filename in (None, str(run_dir)) else f" ({e.filename})"
        raise RunDirUnwritable(f"cannot write the run directory {run_dir}: {e.strerror}{where}; point "
                               "paths.output_dir at a writable folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLocked(f"run directory {run_dir} is in use by another launch ({holder(path)}); wait for it "
                            "to end (or stop it), or choose another run_name") from None
        log.warning("cannot lock %s (%s): this filesystem has no file locks, so a second launch with the same "
                    "run_name would not be stopped", path, e)
        return False
    busy = _live_slurm_job(run_dir)
    if busy:
        os.close(fd)
        raise RunLocked(busy)
    record = f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    _held[key] = fd
    return True


def _live_slurm_job(run_dir: Path) -> str | None:
    """A SLURM job submitted into `run_dir` (distributed=slurm) that is still queued or running: it trains there
    on its compute nodes, whose processes this host's lock cannot see (the submitting process may be gone)."""
    found = live_job(run_dir, own_job=os.environ.get("SLURM_JOB_ID"))
    if found is None:
        return None
    job_id, state = found
    return (f"run directory {run_dir} is in use by SLURM job {job_id} ({state.state}); wait for it to end, or "
            f"stop it (scancel {job_id}: it saves a checkpoint first), or choose another run_name")


def holder(path: Path) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        text = ""
    return text or "holder unknown"


def release(run_dir: Path) -> None:
    """Give up this process's lock on `run_dir` (a sweep's jobs in one process: one at a time)."""
    fd = _held.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
