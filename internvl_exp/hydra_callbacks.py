"""Hydra callbacks (configured under `hydra.callbacks` in conf/hydra/default.yaml).

SweepReport: when a multirun ends, write summary.md and summary.png into the sweep directory and scrub
secrets from Hydra's own files there (multirun.yaml holds the command-line overrides).

Imported by Hydra at startup (also for --help and --cfg), so only light imports at module level; the
report's matplotlib is imported when a sweep ends. Importing this module also registers our resolvers:
a joblib worker unpickles these callbacks before it resolves the job's directory name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from internvl_exp.launch.resolvers import register_resolvers

register_resolvers()
log = logging.getLogger(__name__)


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from internvl_exp.redact import scrub_tree

        sweep_dir = Path(str(config.hydra.sweep.dir))
        scrub_tree(sweep_dir)
        try:
            from internvl_exp.tools.report import write_report

            md, png = write_report(sweep_dir)
        except Exception:  # a report problem must not turn a finished sweep into a failure
            log.exception("could not write the sweep report; retry with: python -m internvl_exp.tools.report %s",
                          sweep_dir)
            return
        log.info("sweep report: %s and %s", md, png)
        print(f"\nSweep directory: {sweep_dir}\nSweep report: {md}")
