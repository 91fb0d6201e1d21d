"""What a (re-)run of a run directory does, decided from the `resume` key and what the directory holds.

    resume=auto    (default) continue from the run directory's newest complete checkpoint, if it has one;
                   a run that already finished (metrics.json status completed/diverged, or a saved final/)
                   refuses, so finished work is never overwritten
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internvl_exp.dist import is_main_process, world_size
from internvl_exp.errors import UserError
from internvl_exp.train.checkpointing.checkpoints import checkpoint_step, is_complete, list_checkpoints, warn_incomplete

FINISHED_STATUSES = ("completed", "diverged")
# The exit status of a run stopped by SIGTERM/SIGUSR1 after saving its checkpoint (why 143: train/checkpointing/preemption.py).
PREEMPTED_EXIT_CODE = 143
NEVER = ("false", "never", "no", "0")
MUST = ("true", "yes", "1")


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


def resume_mode(value: Any) -> str:
    """'auto' | 'must' | 'never' | 'path' for a `resume` value (Hydra gives `false` as a bool)."""
    if value is None or value is True or str(value).strip().lower() in MUST:
        return "must" if value is not None else "auto"
    if value is False or str(value).strip().lower() in NEVER:
        return "never"
    if str(value).strip().lower() == "auto":
        return "auto"
    return "path"


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def final_saved(run_dir: Path) -> bool:
    """final/ holds a saved model (final/base alone, the random base a LoRA run saves first, does not count)."""
    final = run_dir / "final"
    return final.is_dir() and any(p.name != "base" for p in final.iterdir())


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


def _from_path(value: str, warn: bool) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise RunRefused(f"resume={value}: no such run directory or checkpoint; give a run directory "
                         "(outputs/<experiment>/<run_name>) or one of its checkpoints/checkpoint-N")
    if checkpoint_step(path) is not None:
        if not is_complete(path):
            raise RunRefused(f"resume={value}: this checkpoint is incomplete (no checkpoint_complete.json: its save "
                             "was interrupted); give another checkpoint or its run directory")
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = list_checkpoints(folder)
    if warn:
        warn_incomplete(found)
    newest = found.newest
    if newest is None:
        raise RunRefused(f"resume={value}: {folder} has no complete checkpoint to resume from")
    return newest


def plan_resume(resume: Any, run_dir: Path, warn: bool = True) -> ResumePlan:
    """The plan for training into `run_dir`; raises RunRefused when the run must not go ahead there.
    `warn`: name the incomplete checkpoints that are skipped (once per run: the job checks with warn=False)."""
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
    if mode == "path":
        return ResumePlan(mode, _from_path(str(resume), warn))
    found = list_checkpoints(run_dir / "checkpoints")
    if warn:
        warn_incomplete(found)
    if mode == "must" and found.newest is None:
        raise RunRefused(f"resume=true: {run_dir / 'checkpoints'} has no complete checkpoint to resume from; "
                         "use resume=auto to start over when there is none")
    return ResumePlan(mode, found.newest)


def agreed_plan(resume: Any, run_dir: Path) -> ResumePlan:
    """plan_resume on every rank, then rank 0's plan for all (a rank that sees the files differently, e.g. a
    lagging network filesystem, still resumes from the same checkpoint). Needs the process group (if any) to
    be initialised, which TrainingArguments does."""
    import torch.distributed as dist

    multi = world_size() > 1
    plan = plan_resume(resume, run_dir, warn=is_main_process())
    if not multi:
        return plan
    chosen = [str(plan.checkpoint) if plan.checkpoint is not None else None]
    dist.broadcast_object_list(chosen, src=0)
    return ResumePlan(plan.mode, Path(chosen[0]) if chosen[0] is not None else None)


def resume_problems(value: Any) -> list[str]:
    """Config validation: a `resume` path must exist (checked before any run directory is made)."""
    if resume_mode(value) == "path" and not Path(str(value)).expanduser().exists():
        return [f"resume: {value!r} is not auto, true, false or an existing run directory / checkpoint "
                "(outputs/<experiment>/<run_name> or .../checkpoints/checkpoint-N)"]
    return []
