"""Hydra callbacks (configured under `hydra.callbacks` in conf/hydra/default.yaml).

RunGuard: before Hydra creates a single run's directory, refuse to touch a finished run (or move to a fresh
`<run_name>-N` with resume=false). The config is resolved and validated once, in the job (launch/job.py): a
rejected single run exits with the message and leaves no directory. Every job first applies its `secrets`
patterns to the redaction layer, and a sweep's multirun.yaml (Hydra writes the raw command line into it) is
scrubbed as soon as its first job starts.

SweepReport: when a multirun ends, write summary.md and summary.png into the sweep directory and scrub
secrets from Hydra's own files there (multirun.yaml holds the command-line overrides).

Imported by Hydra at startup (also for --help and --cfg), so only light imports at module level; the
report's matplotlib is imported when a sweep ends. Importing this module also registers our resolvers:
a joblib worker unpickles these callbacks before it resolves the job's directory name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from internvl_exp.config.resume_rules import resume_mode
from internvl_exp.launch.job import note_new_dirs
from internvl_exp.launch.resolvers import register_resolvers
from internvl_exp.launch.run_lock import RunDirUnwritable, RunLocked, acquire
from internvl_exp.launch.slurm_queue import quiet_sacct
from internvl_exp.redact import configure, scrub, scrub_tree
from internvl_exp.tools.report import write_report
from internvl_exp.train.checkpointing.resume import RunRefused, fresh_run_dir, has_work, launch_plan

register_resolvers()
log = logging.getLogger(__name__)


class RunGuard(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        configure(config.get("secrets"))
        HydraConfig.instance().set_config(config)  # so `${hydra:...}` interpolations resolve while checking
        choose_run_dir(config)
        note_new_dirs(Path(str(config.hydra.run.dir)))
        lock_run_dir(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        configure(config.get("secrets"))
        quiet_sacct()  # the submitit launchers poll sacct, which fails on clusters without accounting

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.types import RunMode

        configure(config.get("secrets"))
        if config.hydra.mode == RunMode.MULTIRUN:
            record = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
            if record.is_file():
                scrub_file(record)


def choose_run_dir(config: DictConfig) -> None:
    """Before Hydra creates (or reopens) a single run's directory: refuse to touch a finished run, and with
    resume=false move to a fresh `<run_name>-N` directory when this one already holds work (train/checkpointing/resume.py)."""
    from omegaconf import open_dict, read_write

    run_dir = Path(str(config.hydra.run.dir))
    if resume_mode(config.get("resume")) == "never" and has_work(run_dir):
        fresh = fresh_run_dir(run_dir)
        with read_write(config), open_dict(config):
            config.run_name = fresh.name
            config.hydra.run.dir = str(fresh)
        log.info("resume=false: %s already holds a run; this one goes to %s", run_dir, fresh)
        return
    try:
        launch_plan(config.get("resume"), run_dir, keep=True)  # the job takes it
    except RunRefused as e:
        raise SystemExit(str(e)) from None


def lock_run_dir(config: DictConfig) -> None:
    """Hold the run directory for this launch (launch/run_lock.py): a second launch with the same run_name
    refuses in one line naming the holder, before anything is written."""
    try:
        acquire(Path(str(config.hydra.run.dir)))
    except (RunLocked, RunDirUnwritable) as e:
        raise SystemExit(str(e)) from None


def scrub_file(path: Path) -> None:
    """Rewrite `path` scrubbed (atomically: joblib workers may do this at the same time), if it holds a secret."""
    text = path.read_text()
    clean = scrub(text)
    if clean != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(clean)
        tmp.replace(path)


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        scrub_tree(sweep_dir)
        try:
            md, png = write_report(sweep_dir)
        except Exception:  # a report problem must not turn a finished sweep into a failure
            log.exception("could not write the sweep report; retry with: python -m internvl_exp.tools.report %s",
                          sweep_dir)
            return
        log.info("sweep report: %s and %s", md, png)
        print(f"\nSweep directory: {sweep_dir}\nSweep report: {md}")
