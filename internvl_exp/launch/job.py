"""What one Hydra job does: name the run, snapshot config and provenance, validate, run, record the outcome.

A failed job always leaves `metrics.json` with `status: failed` and the error (the traceback is in train.log),
except a single run that fails validation or fails before its first optimizer step in a directory that held
no earlier work: that one exits with the message alone (a bug's traceback above it) and leaves no directory.
In a sweep the job then returns None, so the sweeper records a failed trial and the sweep goes on; a single
run exits non-zero with one clear line. Nothing written here carries a secret (redact.py).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from internvl_exp.config.resolve import resolve, resolve_device
from internvl_exp.errors import ConfigError, UserError
from internvl_exp.launch.console import summary_line
from internvl_exp.launch.precheck import data_file_error
from internvl_exp.launch.run_lock import LOCK_FILE, RunDirUnwritable, RunLocked, acquire, release
from internvl_exp.launch.signals import pass_on
from internvl_exp.launch.slurm import run_slurm
from internvl_exp.launch.torchrun import run_workers
from internvl_exp.models.resolve import record_weights, resolve_weights
from internvl_exp.outputs import RunDir, metric_value, write_config, write_json_atomic
from internvl_exp.provenance import write_provenance
from internvl_exp.redact import configure, scrub, scrub_tree
from internvl_exp.train.checkpointing.resume import PREEMPTED_EXIT_CODE, Preempted, RunRefused, has_work, launch_plan
from internvl_exp.train.checkpointing.resume_config import check_resume_config
from internvl_exp.train.reporting.console_header import print_launch_header

log = logging.getLogger(__name__)


def name_run(cfg: DictConfig, run_dir: Path, sweep_dir: Path | None) -> None:
    """In a sweep a job is named after its directory (`<num>_<overrides>`) and carries the sweep's name;
    a single run keeps its run_name and has no sweep_name."""
    if sweep_dir is not None:
        cfg.run_name = run_dir.name
        cfg.sweep_name = sweep_dir.name
    else:
        cfg.sweep_name = None


def record_failure(rd: RunDir, error: BaseException, started: float, status: str = "failed") -> dict[str, Any]:
    metrics = {
        "status": status,
        "error": scrub(f"{type(error).__name__}: {error}"),
        "error_type": type(error).__name__,
        "runtime_s": time.time() - started,
        "run_dir": str(rd.root),
    }
    write_json_atomic(rd.metrics, metrics)
    return metrics


def objective(metrics: dict[str, Any], key: str, sweep: bool) -> float | None:
    """The value the sweeper optimises; None (a failed trial) when missing or not a finite number."""
    try:
        value = metric_value(metrics, key)
    except KeyError as e:
        (log.error if sweep else log.warning)("%s", e.args[0])
        return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        log.warning("optimized_metric=%s is %r: not a finite number, the sweeper records a failed trial", key, value)
        return None
    return float(value)


def _traceback_to_log_files(error: BaseException) -> None:
    """Write the traceback of `error` to the file handlers only (train.log), through their scrub filters."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "run failed: %s: %s",
                            (type(error).__name__, error), (type(error), error, error.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


# The topmost folder of a single run's directory that did not exist before Hydra made it (hydra_callbacks.RunGuard
# notes it before the directory is created), so a rejected run removes exactly what its launch made.
_made_from: list[Path] = []


def note_new_dirs(run_dir: Path) -> None:
    """Before Hydra creates `run_dir`: remember its topmost ancestor that does not exist yet."""
    top = None
    for p in [run_dir, *run_dir.parents]:
        if p.exists():
            break
        top = p
    _made_from[:] = [top] if top is not None else []


def _discard_run_dir(root: Path) -> None:
    """Remove a single run's directory that holds nothing but an empty-so-far log (Hydra made it before the
    job started), and the folders above it that this launch made, if they are then empty."""
    if not root.is_dir() or any(p.name not in ("train.log", LOCK_FILE) for p in root.iterdir()):
        return
    release(root)
    for p in root.iterdir():
        p.unlink()
    root.rmdir()
    _discard_made_parents(root)


def _discard_made_parents(root: Path) -> None:
    """The folders above a removed run directory that this launch made, if they are now empty."""
    top = _made_from[0] if _made_from else root.parent
    for parent in root.parents:
        if not parent.is_dir() or any(parent.iterdir()) or top not in (parent, *parent.parents):
            break
        parent.rmdir()


def _failed_before_first_step(error: Exception, root: Path) -> None:
    """A single run that failed before its first step (bad data, missing weights, a crash while building) has
    nothing to keep or resume: its directory goes, and the error is said once (a bug's traceback with it)."""
    import shutil

    clear = isinstance(error, UserError)
    if not clear:
        log.error("run failed before its first step: %s: %s", type(error).__name__, error, exc_info=True)
    shutil.rmtree(root, ignore_errors=True)
    _discard_made_parents(root)
    raise SystemExit(scrub(f"run failed: {type(error).__name__}: {error}") if clear else 1) from None


def _container(spec: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(spec, resolve=True)  # type: ignore[return-value]


def resume_command(overrides: list[str], run_name: str) -> str:
    """The command that continues this run: the same overrides with this run's name (run_name defaults to a
    timestamp, so a re-run without it would start a new run)."""
    import shlex

    kept = [o for o in overrides if o.lstrip("+~").partition("=")[0] not in ("run_name", "resume")]
    return " ".join(["python launch.py", *map(shlex.quote, kept), shlex.quote(f"run_name={run_name}")])


def run_job(cfg: DictConfig, run_dir: Path, overrides: list[str], sweep_dir: Path | None = None) -> float | None:
    try:
        return _run_job(cfg, run_dir, overrides, sweep_dir)
    finally:
        release(run_dir)  # the run is over (taken in _run_job, or by RunGuard before Hydra made the directory)


def _run_job(cfg: DictConfig, run_dir: Path, overrides: list[str], sweep_dir: Path | None) -> float | None:
    started = time.time()
    configure(cfg.secrets)  # the run's `secrets` patterns, before anything is written
    rd = RunDir(run_dir)
    sweep = sweep_dir is not None
    name_run(cfg, rd.root, sweep_dir)
    spec = None
    if not sweep:
        # The one resolution and validation of the run (config/resolve.py). A single run that fails it leaves no
        # directory (Hydra made one with an empty log before the job started).
        try:
            spec = resolve(cfg, overrides)
        except ConfigError as e:
            _discard_run_dir(rd.root)
            raise SystemExit(str(e)) from None

        problem = data_file_error(spec)  # a missing meta/annotation file: in a second, before torch is imported
        if problem is not None:
            _discard_run_dir(rd.root)
            raise SystemExit(f"run failed: {problem}")
    # Before anything is written: one launch per run directory (launch/run_lock.py), and a finished run is never
    # overwritten (train/checkpointing/resume.py).
    try:
        acquire(rd.root)
        plan = launch_plan(cfg.resume, rd.root)  # made by the Hydra callback for a single run
        # Settings changed since the checkpoint: refuse what cannot apply, before config.yaml is rewritten (a
        # sweep job's spec is resolved below: checked there, its refusal recorded in its directory).
        changed = check_resume_config(_container(spec), plan.checkpoint) if spec is not None else []
    except (RunRefused, RunLocked, RunDirUnwritable) as e:
        if sweep:
            log.error("job %s not run: %s", rd.root.name, e)
            return None
        raise SystemExit(str(e)) from None

    fresh = not has_work(rd.root)  # nothing of an earlier attempt here (a failure may then remove the directory)
    rd.root.mkdir(parents=True, exist_ok=True)
    training = False  # set once the training processes start (before: nothing of the run exists but its config)
    try:
        if spec is None:  # a sweep job: its failure to resolve is recorded in its directory, and the sweep goes on
            try:
                spec = resolve(cfg, overrides)
            except ConfigError:
                write_config(rd, OmegaConf.to_container(cfg, resolve=True), overrides)  # what was asked
                raise
            changed = check_resume_config(_container(spec), plan.checkpoint)
        if changed:
            log.warning("resume from %s: changed settings apply from its step on: %s", plan.checkpoint,
                        "; ".join(changed))
        weights = resolve_weights(spec)  # the weights are on this machine (or random is asked for): fail in seconds
        record_weights(spec, weights)  # the workers load these, not look again
        resolve_device(spec)  # imports torch: after the light checks
        cfg = spec  # from here on, only the resolved spec
        saved = write_config(rd, OmegaConf.to_container(spec, resolve=True), overrides)  # scrubbed

        print_launch_header(cfg, saved, weights, rd.root)  # the config tree too under print_config=true
        write_provenance(rd.provenance, Path(cfg.paths.root_dir))

        training = True
        if cfg.distributed.name in ("torchrun", "slurm"):  # the workers log to the tracker, write metrics.json
            if cfg.distributed.name == "slurm":
                metrics = run_slurm(cfg, rd)
                if metrics is None:  # submitted, not waited for (distributed.wait=false)
                    print(f"\nRun directory: {rd.root} (submitted; metrics.json appears when the job ends)")
                    return None
            else:
                metrics = run_workers(cfg, rd)
            caught = metrics.pop("launcher_signal", None)  # what this process caught while the workers ran
            if metrics.get("status") == "preempted":  # rank 0 saved the checkpoint and wrote metrics.json
                raise Preempted(metrics.get("signal", "a signal"), metrics.get("checkpoint"), metrics, caught)
        else:
            from internvl_exp.train.recipe.run import run
            from internvl_exp.train.reporting.loggers import experiment_logger

            with experiment_logger(cfg, rd, saved):
                metrics = run(cfg, rd)
    except Preempted as e:  # run.py saved the checkpoint and wrote metrics.json (status: preempted)
        scrub_tree(rd.root)
        log.warning("run preempted by %s at step %s; checkpoint: %s", e.signal_name, e.metrics.get("steps"),
                    e.checkpoint)
        print(f"\nRun directory: {rd.root} (preempted)\nto resume: {resume_command(overrides, cfg.run_name)}")

        # The handler installed before ours (submitit's checkpoint-and-requeue) runs now, after the save.
        code = pass_on(e.caught)
        raise SystemExit(PREEMPTED_EXIT_CODE if code is None else code) from None
    except KeyboardInterrupt as e:
        record_failure(rd, e, started, status="interrupted")
        scrub_tree(rd.root)
        print(f"\nto resume: {resume_command(overrides, cfg.run_name)}")
        raise
    except Exception as e:
        # run.py tells how many steps it finished (0: failed while building); the workers' failures do not.
        before_first_step = not training or getattr(e, "steps_done", None) == 0
        if not sweep and fresh and before_first_step and not has_work(rd.root):
            _failed_before_first_step(e, rd.root)
        record_failure(rd, e, started)
        # A user mistake (config key, data file:line) shows just its message on the console; a bug shows the
        # traceback too. train.log always keeps the traceback. The message is said once, by the exit below; a bug's traceback goes to the console too.
        clear = isinstance(e, UserError) or getattr(e, "one_line", False)
        if clear:
            _traceback_to_log_files(e)
        else:
            log.error("run failed: %s: %s", type(e).__name__, e, exc_info=True)
        scrub_tree(rd.root)
        if sweep:
            log.error("job %s failed (recorded in its metrics.json); the sweep goes on", rd.root.name)
            return None
        where = "metrics.json has the status, train.log the traceback"
        raise SystemExit(scrub(f"{chr(10) if clear else ''}run failed: {type(e).__name__}: {e}\nRun directory: {rd.root} ({where})\n"
                               f"to resume (from its newest complete checkpoint, if any): "
                               f"{resume_command(overrides, cfg.run_name)}"))

    metric = cfg.optimized_metric  # resolved: final_eval_loss with eval data, else final_loss
    value = objective(metrics, metric, sweep)
    metrics.update({"optimized_metric": metric, "objective": value})
    write_json_atomic(rd.metrics, metrics)
    log.info("%s", summary_line(metrics))  # the run directory is printed once, below
    scrub_tree(rd.root)
    print(f"\nRun directory: {rd.root}")
    if not sweep and (rd.final / "config.json").is_file():  # what to do next with a trained model
        print(f"chat with it: python -m internvl_exp.tools.chat {rd.root} \"your question\" (--image PATH adds "
              f"an image; without a question it is interactive)")
    return value
