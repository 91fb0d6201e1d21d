"""What SLURM says about a job, from squeue: it needs no accounting (sacct works only with slurmdbd), and
answers while the job is queued, running, and for MinJobAge (300 s by default) after it ended.

Also: which pending reasons can never resolve (the job would wait forever), what sbatch's refusal says, and
the record of the job that owns a run directory (launch/run_lock.py refuses a second launch into it).

Light: standard library only (the run lock imports it).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

JOB_RECORD = ".slurm_job"  # in the run directory: the id of the SLURM job that trains into it

# States of a job that is still queued or running (or still ending): it may write into its run directory.
ALIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
         "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}

# Pending reasons that no amount of waiting resolves: the request exceeds what the partition, QOS or account
# allows per job, or names something that does not exist. What each means, for the error.
NEVER_STARTS = {
    "PartitionNodeLimit": "the partition has fewer nodes than the job asks for (distributed.nodes), or a "
                          "per-job node limit below it",
    "PartitionTimeLimit": "distributed.time is above the partition's time limit",
    "PartitionConfig": "the partition cannot run it (e.g. more CPUs or GPUs per node than its nodes have)",
    "BadConstraints": "no node of the partition has what the job asks for (distributed.constraint, "
                      "gpus_per_node, cpus_per_task or mem_gb)",
    "InvalidAccount": "distributed.account is not an account of yours",
    "InvalidQOS": "distributed.qos is not a QOS you may use",
}
_PER_JOB_LIMIT = re.compile(r"^(QOS|Assoc)Max\w*PerJob\w*$")  # e.g. QOSMaxNodePerJobLimit


def never_starts(reason: str) -> str | None:
    """What a pending reason means when the job can never start with it; None when waiting may help."""
    if reason in NEVER_STARTS:
        return NEVER_STARTS[reason]
    if _PER_JOB_LIMIT.match(reason):
        return "it exceeds a per-job limit of the QOS or account"
    return None


@dataclass(frozen=True)
class JobState:
    state: str  # PENDING, RUNNING, COMPLETED, CANCELLED, ... (squeue %T)
    reason: str  # why it waits, or why it ended (squeue %r; "None" when there is none)
    nodes: str = ""

    @property
    def alive(self) -> bool:
        return self.state in ALIVE


def job_state(job_id: str) -> JobState | None:
    """The job as squeue sees it; None when squeue does not know it (ended longer ago than MinJobAge, or no
    squeue here)."""
    if not shutil.which("squeue"):
        return None
    try:
        res = subprocess.run(["squeue", "--noheader", "--states=all", "--jobs", str(job_id), "--format=%T|%r|%N"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("squeue -j %s failed: %s", job_id, e)
        return None
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0]:
            return JobState(parts[0], parts[1], parts[2])
    return None


def sbatch_refusal(error: BaseException) -> str:
    """sbatch's own words from a failed submission (submitit wraps them in a long message)."""
    text = str(error)
    lines = [m.group(1).strip() for m in re.finditer(r"sbatch: error: ([^\n\\]*)", text)]
    # "Batch job submission failed: <why>" repeats the first line in other words: keep the specific one.
    specific = [line for line in lines if not line.startswith("Batch job submission failed")]
    return "; ".join(specific or lines) or text.strip().splitlines()[-1][:300]


def record_job(run_dir: Path, job_id: str) -> None:
    (Path(run_dir) / JOB_RECORD).write_text(f"{job_id}\n")


def live_job(run_dir: Path, own_job: str | None = None) -> tuple[str, JobState] | None:
    """The SLURM job recorded in `run_dir` when it is still queued or running (and is not `own_job`)."""
    path = Path(run_dir) / JOB_RECORD
    try:
        job_id = path.read_text().strip()
    except OSError:
        return None
    if not job_id or job_id == own_job:
        return None
    state = job_state(job_id)
    return (job_id, state) if state is not None and state.alive else None


class _SacctOnce(logging.Filter):
    """submitit polls sacct, which fails without SLURM accounting, and logs "Bypassing sacct error ... status
    may be inaccurate" at every poll: say once what it means instead."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if not _SacctOnce.said:
            _SacctOnce.said = True
            log.warning("sacct fails here (this SLURM has no accounting database): submitit cannot read job "
                        "states from it, so jobs are followed through their result files (and squeue, under "
                        "distributed=slurm); said once, not at every poll")
        return False


def quiet_sacct() -> None:
    """Install the once-only sacct note on submitit's logger (idempotent)."""
    sub = logging.getLogger("submitit")
    if not any(isinstance(f, _SacctOnce) for f in sub.filters):
        sub.addFilter(_SacctOnce())
