"""distributed=slurm: one SLURM job for the run, one task per node, each starting torchrun on the run directory.

On the login node the Hydra job has composed, validated and written `<run_dir>/config.yaml` (compose once);
`run_slurm` then submits, through submitit, `NodeLauncher(run_dir)` as a job of `distributed.nodes` nodes x 1
task with `gpus_per_node` GPUs each (sbatch parameters: `executor_parameters`), and waits for it. On every
node the task builds its torchrun command from SLURM's environment (`node_torchrun_argv`): --nnodes
$SLURM_NNODES, --node_rank $SLURM_NODEID, --nproc_per_node gpus_per_node, rendezvous on the first host of
$SLURM_JOB_NODELIST at master_port (default 20000 + job id % 20000) with the job id as rendezvous id; the
workers load config.yaml without Hydra (launch many).

Already inside a SLURM job step (a sweep job of `-m hydra/launcher=submitit_slurm`, or `srun python launch.py`)
nothing is submitted: the job starts torchrun on its own node from the same environment (one node).

Preemption and requeue: sbatch gets `--signal=USR1@<signal_delay_s>` and `--requeue`; SLURM signals every
process of the step, the workers save a complete checkpoint at the next step and exit 143 (launch/signals.py
keeps torchrun and this task alive meanwhile), then node 0's task requeues the job (`scontrol requeue`) unless
submitit's own handler did, and every task exits 143. The requeued job runs the same tasks on the same run
directory, which resume from that checkpoint (train/checkpointing/resume.py). SIGTERM (`scancel`, a preemption)
saves and stops without a requeue. The signals are caught from the task's first instruction (launch/node_task.py
is submitit's python command) and the workers' (launch/worker.py), so one during start-up requeues too.

Waiting on the login node: the job's result file, and squeue for its state (printed when it changes; no sacct,
which needs accounting: launch/slurm_queue.py). A job that can never start is cancelled with its pending reason;
Ctrl-C leaves the job running and says how to follow or cancel it. The job id is recorded in the run directory,
and the run lock refuses a launch into it while the job lives (launch/run_lock.py).

Light at import (validation imports `slurm_problems`): submitit is imported only to submit.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

from internvl_exp.config.resolve import load_run_config
from internvl_exp.config.schema import Config
from internvl_exp.errors import ConfigError, UserError
from internvl_exp.launch.signals import (
    PREEMPTION_SIGNALS,
    catch_early,
    early_signal,
    in_slurm_step,
    is_submitit_handler,
    mark_for_workers,
    pass_on,
    passes_to_submitit,
)
from internvl_exp.launch.slurm_queue import JobState, job_state, never_starts, quiet_sacct, record_job, sbatch_refusal
from internvl_exp.launch.torchrun import (
    WorkerFailure,
    failure_headline,
    launch_torchrun,
    torchrun_argv,
    workers_outcome,
)
from internvl_exp.outputs import RunDir, write_json_atomic
from internvl_exp.redact import ScrubFilter
from internvl_exp.train.checkpointing.resume import PREEMPTED_EXIT_CODE

log = logging.getLogger(__name__)

PORT_BASE, PORT_SPAN = 20000, 20000


# -- configuration ----------------------------------------------------------------------------------------------


def executor_parameters(d: Any, job_name: str) -> dict[str, Any]:
    """submitit AutoExecutor parameters for the `distributed` config `d` (sbatch: what `--` option each is in
    submitit's script; our own signal and requeue win over submitit's defaults)."""
    sbatch = {"signal": f"USR1@{d.signal_delay_s}"}
    if d.requeue:
        sbatch["requeue"] = True
    sbatch.update({str(k): v for k, v in dict(d.get("sbatch") or {}).items()})
    params: dict[str, Any] = {
        "name": job_name,
        "nodes": d.nodes,
        "tasks_per_node": 1,  # one task per node, which starts torchrun with nproc_per_node workers
        "timeout_min": d.time,
        "slurm_signal_delay_s": d.signal_delay_s,
        "slurm_additional_parameters": sbatch,
    }
    optional = {"cpus_per_task": d.get("cpus_per_task"), "mem_gb": d.get("mem_gb"),
                "slurm_partition": d.get("partition"), "slurm_account": d.get("account"),
                "slurm_qos": d.get("qos"), "slurm_constraint": d.get("constraint")}
    params.update({k: v for k, v in optional.items() if v is not None})
    if d.gpus_per_node:  # 0: a CPU cluster, no --gpus-per-node line (a GRES request some clusters refuse)
        params["gpus_per_node"] = d.gpus_per_node
    return params


# -- SLURM's environment -------------------------------------------------------------------------------------------


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list, expanded: `gpu[001-003,007],cpu5` -> gpu001 gpu002 gpu003 gpu007 cpu5
    (zero padding kept; several bracket groups in one name give every combination)."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise UserError(f"SLURM_JOB_NODELIST={nodelist!r}: unbalanced brackets")
        if ch == "," and depth == 0:
            names.append(nodelist[start:i])
            start = i + 1
    if depth:
        raise UserError(f"SLURM_JOB_NODELIST={nodelist!r}: unbalanced brackets")
    names.append(nodelist[start:])
    return [host for name in names if name.strip() for host in _expand_name(name.strip(), nodelist)]


def _expand_name(name: str, nodelist: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", name)
    if m is None:
        return [name]
    head, rest = name[: m.start()], _expand_name(name[m.end():], nodelist)
    out = []
    for part in m.group(1).split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise UserError(f"SLURM_JOB_NODELIST={nodelist!r}: {part!r} is not a number or a range N-M")
        values = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)] if dash else [lo]
        out += [head + v + r for v in values for r in rest]
    return out


def hostnames(nodelist: str) -> list[str]:
    """The job's hosts: `scontrol show hostnames` when it is installed (SLURM's own answer), else our parser."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("scontrol show hostnames %s failed (%s); parsing the list ourselves", nodelist, e)
    return expand_nodelist(nodelist)


@dataclass(frozen=True)
class SlurmNode:
    """Where this task runs, from SLURM's environment (one node on this machine when there is none)."""

    job_id: str | None
    nnodes: int
    node_rank: int
    nodelist: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "SlurmNode":
        env = os.environ if env is None else env
        job_id = env.get("SLURM_JOB_ID")
        if not job_id:
            return cls(None, 1, 0, None)
        nodes = env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or "1"
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        return cls(job_id, int(nodes), int(env.get("SLURM_NODEID", "0")), nodelist)

    def rendezvous_host(self) -> str:
        if not self.nodelist:
            return "127.0.0.1"
        return hostnames(self.nodelist)[0]


def rendezvous_port(d: Any, node: SlurmNode) -> int | None:
    """master_port, else one derived from the job id (jobs sharing a node do not collide); None off SLURM."""
    if d.get("master_port"):
        return int(d.master_port)
    if node.job_id is None:
        return None
    return PORT_BASE + int(re.sub(r"\D", "", node.job_id) or 0) % PORT_SPAN


def node_torchrun_argv(d: Any, run_dir: Path, node: SlurmNode) -> list[str]:
    """This node's torchrun command line (launch/torchrun.py builds it from these numbers)."""
    if node.nnodes != d.nnodes:
        raise ConfigError(f"distributed.nodes={d.nnodes} but this SLURM job has {node.nnodes} node(s) "
                          f"(SLURM_NNODES); submit with distributed.nodes={node.nnodes} or allocate {d.nnodes}")
    port = rendezvous_port(d, node)
    if node.job_id is None:  # submitit's local executor: a private localhost rendezvous, as torchrun does
        endpoint, rdzv_id = None, None
    else:
        endpoint, rdzv_id = f"{node.rendezvous_host()}:{port}", f"slurm-{node.job_id}"
    spec = SimpleNamespace(nproc_per_node=d.nproc_per_node, nnodes=node.nnodes, node_rank=node.node_rank,
                           rdzv_backend=d.get("rdzv_backend", "c10d"), rdzv_endpoint=endpoint, rdzv_id=rdzv_id,
                           master_port=port)
    return torchrun_argv(spec, run_dir)


# -- on each node ----------------------------------------------------------------------------------------------------


def requeues(signal_name: str | None) -> bool:
    """Whether a run stopped by `signal_name` asks to be requeued: SIGUSR1/SIGUSR2 (sbatch --signal before the
    time limit, or `scancel --signal=USR1`) do; SIGTERM (`scancel`, or a preemption, which SLURM requeues
    itself under PreemptMode=REQUEUE) and Ctrl-C do not: the job stops with its checkpoint."""
    return signal_name not in ("SIGTERM", "SIGINT")


def requeue(node: SlurmNode) -> bool:
    """`scontrol requeue <job>` from node 0's task (the job then ends here and starts again later)."""
    if node.job_id is None or node.node_rank != 0:
        return False
    if not shutil.which("scontrol"):
        log.warning("distributed.requeue: scontrol is not on PATH; job %s is not requeued (re-run to resume)",
                    node.job_id)
        return False
    code = subprocess.call(["scontrol", "requeue", node.job_id], timeout=60)
    if code != 0:  # e.g. SLURM is requeueing it already (PreemptMode=REQUEUE)
        log.warning("scontrol requeue %s exited with %d", node.job_id, code)
    else:
        log.info("requeued SLURM job %s: it resumes from the newest complete checkpoint", node.job_id)
    return code == 0


def _log_to_stdout() -> None:
    import sys

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
        handler.addFilter(ScrubFilter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)


class NodeLauncher:
    """What every node's SLURM task runs (submitit pickles it): torchrun with this node's share of the workers
    on `run_dir`. Returns rank 0's metrics; preempted, it requeues (node 0) and exits 143 without a result, so
    that submitit waits for the requeued job."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = str(run_dir)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Where launch/node_task.py did not start the task (submitit's local executor), this is the first of our
        # code to run (submitit unpickles this object): catch SIGUSR1, which would end the task during start-up.

        catch_early(PREEMPTION_SIGNALS, only_default=True)
        self.__dict__.update(state)

    def run(self) -> dict[str, Any]:
        """Start and wait for this node's workers; rank 0's metrics (status preempted included; with
        `launcher_signal`, what this task caught meanwhile)."""
        rd = RunDir(Path(self.run_dir))
        cfg = load_run_config(rd.config)
        self.requeue, node = bool(cfg.distributed.requeue), SlurmNode.from_env()
        argv = node_torchrun_argv(cfg.distributed, rd.root, node)
        if node.job_id is not None:  # a worker still starting when SLURM signals the step learns it from here
            mark_for_workers(str(rd.root / f".preempt-node{node.node_rank}"),
                             f"{node.job_id}.{os.environ.get('SLURM_RESTART_COUNT', '0')}")
        early = early_signal()
        if early is not None:  # preempted before the workers started: nothing new to save
            metrics = self._stopped_before_start(early, rd, node)
        else:
            log.info("SLURM job %s node %d/%d: %s", node.job_id, node.node_rank, node.nnodes, " ".join(argv[1:]))
            code, held = launch_torchrun(argv, str(cfg.paths.root_dir))
            metrics = workers_outcome(code, rd, what=f"torchrun on node {node.node_rank}", held=held)
        caught = metrics.get("launcher_signal") or metrics.get("signal")
        if metrics.get("status") == "preempted" and self.requeue and not passes_to_submitit(caught):
            if requeues(caught):
                requeue(node)  # else submitit's own handler requeues when the signal is passed on
            else:
                log.info("SLURM job %s stopped by %s with a checkpoint, not requeued (SIGTERM: cancelled or "
                         "preempted; a preempting SLURM requeues the job itself)", node.job_id, caught)
        return metrics

    def _stopped_before_start(self, signal_name: str, rd: RunDir, node: SlurmNode) -> dict[str, Any]:
        """A preemption signal that came while this task started: the workers are not started at all; the
        run resumes from its newest complete checkpoint, if any, as it would have."""
        log.warning("preemption: %s arrived before the workers started; not starting them (the run resumes from "
                    "its newest complete checkpoint, if any)", signal_name)
        metrics = {"status": "preempted", "signal": signal_name, "checkpoint": None, "steps": None,
                   "run_dir": str(rd.root), "launcher_signal": signal_name}
        if node.node_rank == 0:
            write_json_atomic(rd.metrics, {k: v for k, v in metrics.items() if k != "launcher_signal"})
        return metrics

    def __call__(self) -> dict[str, Any]:
        import signal

        # submitit has just set its SIGTERM handler, which only logs the signal: a `scancel` from now until the
        # workers start would be lost (the job then runs until SLURM kills it). Caught instead (its log line is
        # all that is lost of submitit's handler).
        if is_submitit_handler(signal.getsignal(signal.SIGTERM)):
            catch_early((signal.SIGTERM,))

        _log_to_stdout()  # this task's log: submitit's <job>_<task>_log.out
        metrics = self.run()
        caught = metrics.pop("launcher_signal", None)
        if metrics.get("status") == "preempted":
            code = pass_on(caught)
            raise SystemExit(PREEMPTED_EXIT_CODE if code is None else code)
        return metrics


# -- on the login node ------------------------------------------------------------------------------------------------


def make_executor(d: Any, run_dir: RunDir, job_name: str) -> Any:
    import submitit

    extra = {}
    if d.executor == "slurm":  # the task's first instruction catches the preemption signals (launch/node_task.py)
        extra["slurm_python"] = f"{shlex.quote(sys.executable)} -u -m internvl_exp.launch.node_task"
    executor = submitit.AutoExecutor(folder=str(run_dir.root / "submitit" / "%j"), cluster=d.executor, **extra)
    executor.update_parameters(**executor_parameters(d, job_name))
    return executor


class SlurmSubmitError(UserError):
    """sbatch refused the job (a bad partition, account, QOS or option): nothing was submitted."""

    steps_done = 0  # job.py: nothing ran, so a fresh run directory is removed and the message said once


class SlurmJobNeverStarts(UserError):
    """The job waits for something that cannot happen (PartitionNodeLimit, ...): it was cancelled."""

    steps_done = 0


def run_slurm(cfg: Config, run_dir: RunDir) -> dict[str, Any] | None:
    """Submit the run's SLURM job and wait for it (rank 0's metrics), or, inside a SLURM job step already,
    start this node's workers here. None: submitted, not waited for (distributed.wait=false)."""
    d = cfg.distributed
    if in_slurm_step():
        node = SlurmNode.from_env()
        if node.nnodes != 1:
            raise ConfigError(f"distributed=slurm inside a SLURM job of {node.nnodes} nodes: each node would run "
                              "the Hydra job; run one node per job here (hydra.launcher.nodes=1), or submit "
                              "from the login node with distributed=slurm distributed.nodes=N")
        log.info("inside SLURM job %s: starting this node's workers (no new submission)", node.job_id)
        return NodeLauncher(run_dir.root).run()
    executor = make_executor(d, run_dir, f"{cfg.experiment_name}/{run_dir.root.name}")
    quiet_sacct()
    import contextlib
    import io

    submitted = time.time()
    said = io.StringIO()  # submitit prints sbatch's stderr itself when it fails: the error below says it once
    try:
        with contextlib.redirect_stderr(said):
            job = executor.submit(NodeLauncher(run_dir.root))
    except FileNotFoundError as e:  # no sbatch here
        raise SlurmSubmitError(f"distributed=slurm: {e.filename or 'sbatch'} is not on PATH; submit from a SLURM "
                               "login node, or run on this machine with distributed.executor=local") from None
    except Exception as e:  # submitit's FailedJobError carries sbatch's stderr
        raise SlurmSubmitError(f"sbatch refused the job: {sbatch_refusal(e)} (check distributed.partition, "
                               f"account, qos, constraint and sbatch; `sinfo -s` lists the partitions)") from None
    sys.stderr.write(said.getvalue())  # whatever sbatch said about a job it accepted
    if d.executor == "slurm":
        record_job(run_dir.root, str(job.job_id))  # the run lock refuses a second launch while it lives
    gpus = f"{d.gpus_per_node} GPU(s)" if d.gpus_per_node else "no GPU"
    log.info("submitted %s job %s: %d node(s) x %d process(es), %s each; submitit logs in %s (cancel: scancel %s)",
             d.executor, job.job_id, d.nodes, d.nproc_per_node, gpus, run_dir.root / "submitit", job.job_id)
    print(f"SLURM job {job.job_id}: {run_dir.root}", flush=True)
    if not d.wait:
        return None
    if d.executor != "slurm":  # submitit's local executor: its own wait
        return _outcome(job, run_dir, job.result, since=submitted)
    return wait_for(job, run_dir, since=submitted, requeue=bool(d.requeue))


POLL_MIN_S, POLL_MAX_S = 2.0, 30.0


def wait_for(job: Any, run_dir: RunDir, since: float = 0.0, requeue: bool = True) -> dict[str, Any]:
    """Wait for the job (requeues included) and return rank 0's metrics.json; a failure with the job's error.

    The job's result file says it finished; squeue (no accounting needed) says while it lives what it is doing,
    printed when that changes, and that it ended without a result (cancelled, failed, timed out). A job pending
    for a reason that cannot resolve is cancelled with an error. Ctrl-C leaves the job running and says so;
    a second Ctrl-C within 5 s cancels it. `since`: when it was submitted (an older metrics.json is an earlier
    attempt's). `requeue`: distributed.requeue (a preempted run then comes back)."""
    try:
        ended = _watch(job, lambda: requeue and _requeue_expected(run_dir, since))
    except KeyboardInterrupt:
        _interrupted(job, run_dir)
    # (_watch looked for the result file a further SETTLE_S after the job ended: a shared filesystem may show
    # it a moment late.)
    if job.paths.result_pickle.exists():
        return _outcome(job, run_dir, job.result, since=since)
    state = f"{ended.state} ({ended.reason})" if ended and ended.reason not in ("", "None") else \
        ended.state if ended else "gone from squeue"
    print(f"SLURM job {job.job_id}: {state}, without a result", flush=True)
    return _outcome(job, run_dir, None, state, since=since)


def _watch(job: Any, requeue_expected: Any = lambda: False) -> Any:
    """Until the job's result file appears (None) or the job leaves the queue without one (its last state).
    `requeue_expected()`: whether the run says it stopped to be requeued (then an ended state is waited on longer)."""
    started, last, next_poll, seen = time.monotonic(), None, 0.0, None
    while not job.paths.result_pickle.exists():
        now = time.monotonic()
        if now >= next_poll:
            state = job_state(str(job.job_id))
            if state is None or not state.alive:
                state = _settled(job, state, REQUEUE_SETTLE_S if requeue_expected() else SETTLE_S)
            if state is None or not state.alive:
                return state or seen or JobState("UNKNOWN", "None")
            seen = state
            shown = (state.state, state.reason)
            if shown != last:
                last = shown
                where = f" on {state.nodes}" if state.state == "RUNNING" and state.nodes else ""
                why = f" ({state.reason})" if state.reason not in ("", "None") else ""
                print(f"SLURM job {job.job_id}: {state.state}{why}{where}", flush=True)
            cause = never_starts(state.reason) if state.state == "PENDING" else None
            if cause:
                job.cancel(check=False)
                raise SlurmJobNeverStarts(f"SLURM job {job.job_id} can never start: it is pending with reason "
                                          f"{state.reason}: {cause}; it was cancelled (fix the request and run "
                                          "again; `sinfo -s` shows the partitions, `scontrol show partition` "
                                          "their limits)")
            next_poll = now + min(POLL_MAX_S, max(POLL_MIN_S, (now - started) / 20))
        time.sleep(0.5)
    return None


# How long a job seen ended without a result is looked at again: while a requeue takes effect squeue can show the
# ending attempt (FAILED, NonZeroExitCode) before the job is PENDING again; longer when the run itself says it
# stopped to be requeued (a busy slurmctld took over 10 s on the 2-core test machine).
SETTLE_S, REQUEUE_SETTLE_S = 10.0, 120.0


def _metrics_since(run_dir: RunDir, since: float) -> dict[str, Any] | None:
    """The run's metrics.json when it was written after `since` (this submission's; 1 s of slack for file
    systems that keep whole-second times), else None."""
    try:
        if run_dir.metrics.stat().st_mtime < since - 1:
            return None
        metrics = json.loads(run_dir.metrics.read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def _requeue_expected(run_dir: RunDir, since: float) -> bool:
    """The run's metrics.json (this attempt's) says it was preempted by a signal that requeues it."""
    metrics = _metrics_since(run_dir, since)
    return metrics is not None and metrics.get("status") == "preempted" and requeues(metrics.get("signal"))


def _settled(job: Any, state: Any, patience_s: float = SETTLE_S) -> Any:
    """A job seen ended without a result, looked at again for `patience_s` (see SETTLE_S)."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline and not job.paths.result_pickle.exists():
        time.sleep(1.0)
        again = job_state(str(job.job_id))
        if again is not None and again.alive:
            return again
        state = again or state
    return state


def _interrupted(job: Any, run_dir: RunDir) -> None:
    """Ctrl-C while waiting: the job lives on (it is SLURM's, not this process's), unless asked again."""
    logs = run_dir.root / "submitit" / str(job.job_id)
    print(f"\nSLURM job {job.job_id} keeps running: this command only stopped waiting for it.\n"
          f"  follow it: tail -f {logs}/*_0_log.out   (rank 0 also appends to {run_dir.log})\n"
          f"  stop it:   scancel {job.job_id}   (it saves a checkpoint and stops; the same command then resumes)\n"
          f"Press Ctrl-C again within 5 s to cancel it now.", flush=True)
    try:
        time.sleep(5)
    except KeyboardInterrupt:
        job.cancel(check=False)
        print(f"cancelled SLURM job {job.job_id} (scancel): it saves a checkpoint and stops; run the same "
              "command to resume once it has ended", flush=True)
    raise SystemExit(130)


def _outcome(job: Any, run_dir: RunDir, result: Any, state: str | None = None, since: float = 0.0) -> dict[str, Any]:
    """Rank 0's metrics once the job ended: `result` (submitit's) raises the job's failure; without one the job
    ended without a result (`state` says how). A metrics.json older than `since` is an earlier attempt's."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    error = None
    try:
        if result is not None:
            result()
    except (FailedJobError, UncompletedJobError) as e:
        error = str(e).strip().splitlines()[-1:] or [""]
    metrics = _metrics_since(run_dir, since)
    if error is None and result is not None:
        if metrics is None:
            raise WorkerFailure(f"SLURM job {job.job_id} ended but rank 0 wrote no {run_dir.metrics}")
        return metrics
    if metrics and metrics.get("status") == "preempted":  # stopped with a checkpoint (scancel, requeue off)
        return metrics
    if metrics and metrics.get("error"):
        raise WorkerFailure(f"a worker failed: {metrics['error']}")
    headline = failure_headline(run_dir)
    how = headline or (error[0] if error else f"it ended {state} without a result")
    raise WorkerFailure(f"SLURM job {job.job_id} failed: {how} (its logs: {run_dir.root / 'submitit'})")
