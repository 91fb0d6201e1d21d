"""Experiment loggers beyond the console: TensorBoard event files and WandB runs named from config."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from omegaconf import OmegaConf

from internvl_exp.outputs import RunDir


@contextlib.contextmanager
def experiment_logger(cfg: Any, run_dir: RunDir, is_main: bool = True) -> Iterator[None]:
    """Set up the configured logger for the duration of a run; always closes it (wandb.finish)."""
    if cfg.logger.name == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir.root / "tensorboard")
    if cfg.logger.name != "wandb" or not is_main:
        yield
        return
    import wandb

    w = cfg.logger.wandb
    run = wandb.init(
        project=w.project,
        entity=w.entity,
        group=w.group or str(cfg.experiment_name),
        name=str(cfg.run_name),
        tags=list(w.tags),
        job_type=w.job_type,
        mode=w.mode,
        dir=str(run_dir.root),
        config=OmegaConf.to_container(cfg, resolve=True),
        reinit="finish_previous",
    )
    try:
        yield
    except BaseException:
        run.finish(exit_code=1)
        raise
    else:
        run.finish()
