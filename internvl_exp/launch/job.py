"""What one Hydra job does: validate, create the run directory, snapshot the config, run, report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from internvl_exp.config.validate import validate

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> float | None:
    validate(cfg)  # before anything heavy is imported or loaded
    from internvl_exp.outputs import RunDir, write_config

    rd = RunDir(run_dir)
    write_config(rd, OmegaConf.to_container(cfg, resolve=True), overrides)

    from internvl_exp.train.loggers import experiment_logger
    from internvl_exp.train.run import run

    with experiment_logger(cfg, rd):
        metrics = run(cfg, rd)
    log.info(
        "run finished: loss %.4f -> %.4f in %d steps (%.1f s). Run directory: %s",
        metrics["initial_loss"] or float("nan"),
        metrics["final_loss"] or float("nan"),
        metrics["steps"],
        metrics["runtime_s"],
        rd.root,
    )
    print(f"\nRun directory: {rd.root}")
    return metrics["final_loss"]
