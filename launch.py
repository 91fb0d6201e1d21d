#!/usr/bin/env python
"""internvl-exp: compose a run from config groups and train it.

    python launch.py                                   # tiny model + demo data on CPU
    python launch.py data=mix freeze=full optimizer.lr=1e-3
    python launch.py -m optimizer.lr=1e-3,3e-3         # a sweep
    python launch.py hparams_search=optuna_lr          # an Optuna search
    python launch.py --help                            # groups and options

This file is the only Hydra entry point. It imports nothing heavy at module level, so --help and
--cfg job stay fast (no torch, no transformers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from internvl_exp.config.schema import register_configs
from internvl_exp.launch.resolvers import register_resolvers

register_configs(project_root=str(Path(__file__).resolve().parent))
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from internvl_exp.launch.job import run_job

    hc = HydraConfig.get()
    sweep_dir = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    return run_job(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task), sweep_dir)


if __name__ == "__main__":
    from internvl_exp.launch.precheck import check_cfg_request, check_override_keys
    from internvl_exp.shutdown import finish

    check_override_keys(sys.argv[1:], Path(__file__).resolve().parent / "conf")  # "did you mean", in one line
    # Hydra's --cfg runs no callback: validate here, so `--cfg job` fails exactly like the launch would.
    check_cfg_request(sys.argv[1:], Path(__file__).resolve().parent / "conf")
    finish(main)  # under an outside torchrun (`torchrun launch.py ...`) each rank exits without teardown
