"""What a (re-)run of a run directory does, decided from the `resume` key and what the directory holds.

    resume=auto    (default) continue from the run directory's newest complete checkpoint, if it has one;
                   a run that already finished (metrics.json status completed/diverged, or a complete final/:
                   one with its checkpoint_complete.json, moved into place only once saved) refuses, so
                   finished work is never overwritten. A partial final/ (no marker) does not count.
    resume=true    the same, but a run directory without a complete checkpoint is an error
    resume=false   (or never) start over; a run directory that already holds work is left untouched and the
                   run goes to a fresh one, `<run_name>-2` (-3, ...) next to it
    resume=<path>  continue from that run directory's newest complete checkpoint, or from that checkpoint,
                   writing into this run's directory

Every rank computes the same plan from the same files (nothing is written between the decision and training);
run.py also broadcasts rank 0's plan. Light: standard library only (the Hydra callback uses it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internvl_exp.config.resume_rules import resume_mode
from internvl_exp.dist import is_main_process, world_size
from internvl_exp.errors import UserError
from internvl_exp.outputs import BASE_SUBDIR
from internvl_exp.train.checkpointing.checkpoints import (
    MARKER,
    checkpoint_step,
    is_complete,
    list_checkpoints,
    newest_verified,
    verify,
    warn_incomplete,
)

log = logging.getLogger(__name__)

FINISHED_STATUSES = ("completed", "diverged")
# The exit status of a run stopped by SIGTERM/SIGUSR1 after saving its checkpoint (why 143: train/checkpointing/preemption.py).
PREEMPTED_EXIT_CODE = 143


class RunRefused(UserError):
    """A re-run would overwrite finished work or cannot find what it should resume from."""


class Preempted(Exception):
    """Raised by run.py once the preemption checkpoint is saved and metrics.json says `status: preempted`;
    job.py then exits with PREEMPTED_EXIT_CODE."""

    def __init__(self, signal_name: str, checkpoint: str | None, metrics: dict[str, Any],
                 caught: str | None | bool = True):
        self.signal_name, self.checkpoint, self.metrics = signal_name, checkpoint, metrics
        # The signal this process caught, whose previous handler job.py runs after the save (launch/signals.py
        # pass_on): the one that stopped the run (default), or what a launching process caught itself.
        self.caught = signal_name if caught is True else caught
        super().__init__(f"stopped by {signal_name}; checkpoint saved at {checkpoint}")


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def final_saved(run_dir: Path) -> bool:
    """final/ holds a complete saved model: train/final.py writes it elsewhere and moves it into place with its
    marker. A final/ without the marker (a save killed before that existed, or final/base alone, the random
    base a LoRA run saves first) does not count: the run resumes and saves final/ again."""
    return is_complete(run_dir / "final")


def finished(run_dir: Path) -> str | None:
    """Why `run_dir` counts as finished (never to be overwritten), or None."""
    status = _status(run_dir)
    if status in FINISHED_STATUSES:
        return f"metrics.json says status: {status}"
    if final_saved(run_dir):
        return f"{run_dir / 'final'} holds a saved model"
    return None


def has_work(run_dir: Path) -> bool:
    """Anything a run produces beyond its config snapshot and log: checkpoints, final/, metrics.json."""
    ckpts = run_dir / "checkpoints"
    return (run_dir / "metrics.json").exists() or (run_dir / "final").exists() or (
        ckpts.is_dir() and any(checkpoint_step(p) is not None for p in ckpts.iterdir())
    )


def fresh_run_dir(run_dir: Path) -> Path:
    """`<name>-2`, `<name>-3`, ... : the first sibling of `run_dir` that does not exist."""
    n = 2
    while (candidate := run_dir.with_name(f"{run_dir.name}-{n}")).exists():
        n += 1
    return candidate


@dataclass(frozen=True)
class ResumePlan:
    mode: str
    checkpoint: Path | None  # what train() resumes from; None: start at step 0

    def describe(self) -> str:
        if self.checkpoint is None:
            return "starting at step 0"
        return f"resuming from {self.checkpoint} (model, optimizer, scheduler, RNG and data position)"


def _from_path(value: str, warn: bool, checksums: bool) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise RunRefused(f"resume={value}: no such run directory or checkpoint; give a run directory "
                         "(outputs/<experiment>/<run_name>) or one of its checkpoints/checkpoint-N")
    if checkpoint_step(path) is not None:
        if not is_complete(path):
            raise RunRefused(f"resume={value}: this checkpoint is incomplete (no checkpoint_complete.json: its save "
                             "was interrupted); give another checkpoint or its run directory")
        problem = verify(path, checksums)
        if problem is not None:
            raise RunRefused(f"resume={value}: this checkpoint is damaged: {problem}; give another checkpoint or "
                             "its run directory (which falls back to its newest undamaged one)")
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = list_checkpoints(folder)
    if warn:
        warn_incomplete(found)
    newest = newest_verified(found, checksums, warn)
    if newest is None:
        raise RunRefused(f"resume={value}: {folder} has no complete, undamaged checkpoint to resume from")
    return newest


def plan_resume(resume: Any, run_dir: Path, warn: bool = True, checksums: bool = True) -> ResumePlan:
    """The plan for training into `run_dir`; raises RunRefused when the run must not go ahead there.
    `warn`: name the incomplete and damaged checkpoints that are skipped (once per run: the job checks with
    warn=False). `checksums`: read every file of the candidate checkpoint (else sizes only: the other ranks,
    which take rank 0's choice)."""
    run_dir = Path(run_dir)
    mode = resume_mode(resume)
    if mode == "never":
        if has_work(run_dir):
            raise RunRefused(f"resume=false: {run_dir} already holds a run's work and is never overwritten; "
                             f"launch through launch.py (it picks the fresh {fresh_run_dir(run_dir).name}) "
                             "or choose another run_name")
        return ResumePlan(mode, None)
    why = finished(run_dir)
    if why is not None:
        raise RunRefused(f"run {run_dir.name!r} already finished ({why}); its results are never overwritten. "
                         f"To train again into a fresh directory pass resume=false, or choose another run_name")
    if warn and (run_dir / "final").is_dir() and any(p.name != BASE_SUBDIR for p in (run_dir / "final").iterdir()):
        log.warning("ignoring %s: it has no %s (its save was interrupted); the run resumes and saves it again",
                    run_dir / "final", MARKER)
    if mode == "path":
        return ResumePlan(mode, _from_path(str(resume), warn, checksums))
    found = list_checkpoints(run_dir / "checkpoints")
    if warn:
        warn_incomplete(found)
    newest = newest_verified(found, checksums, warn)
    if mode == "must" and newest is None:
        raise RunRefused(f"resume=true: {run_dir / 'checkpoints'} has no complete, undamaged checkpoint to resume "
                         "from; use resume=auto to start over when there is none")
    if newest is None and found.complete:
        log.warning("no undamaged checkpoint in %s: the run starts over at step 0", run_dir / "checkpoints")
    return ResumePlan(mode, newest)


# The launch's plan, made once before Hydra opens the run directory (hydra_callbacks.choose_run_dir) and taken by
# the job (launch/job.py): {(run_dir, resume): plan}. The run makes its own, with checksums, when it starts
# (agreed_plan): a SLURM requeue or a queued job starts long after the launch decided.
_LAUNCH_PLANS: dict[tuple[str, str], ResumePlan] = {}


def launch_plan(resume: Any, run_dir: Path, keep: bool = False) -> ResumePlan:
    """The launch's resume plan for `run_dir` (sizes only, no warnings): the one already made in this process
    for the same directory and setting, else a new one. `keep`: leave it for the job to take (the Hydra callback
    that decides before the directory is opened); the job takes it, so a later launch decides afresh."""
    key = (str(Path(run_dir).resolve()), str(resume))
    plan = _LAUNCH_PLANS.pop(key, None) or plan_resume(resume, run_dir, warn=False, checksums=False)
    if keep:
        _LAUNCH_PLANS[key] = plan
    return plan


def agreed_plan(resume: Any, run_dir: Path) -> ResumePlan:
    """plan_resume on every rank, then rank 0's plan for all (a rank that sees the files differently, e.g. a
    lagging network filesystem, still resumes from the same checkpoint). Needs the process group (if any) to
    be initialised, which TrainingArguments does."""
    import torch.distributed as dist

    multi = world_size() > 1
    main = is_main_process()
    try:
        plan, refused = plan_resume(resume, run_dir, warn=main, checksums=main), None
    except RunRefused as e:  # e.g. a damaged checkpoint that only rank 0 (the one reading checksums) sees
        plan, refused = None, str(e)
    if not multi:
        if refused is not None:
            raise RunRefused(refused)
        return plan
    # Rank 0's answer, refusal included, for every rank (a rank alone raising would leave the others waiting).
    chosen = [refused, str(plan.checkpoint) if plan is not None and plan.checkpoint is not None else None]
    dist.broadcast_object_list(chosen, src=0)
    if chosen[0] is not None:
        raise RunRefused(chosen[0])
    return ResumePlan(resume_mode(resume), Path(chosen[1]) if chosen[1] is not None else None)


