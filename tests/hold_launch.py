"""`python launch.py ARGS`, held at one point of a save so that a test can kill -9 the run exactly there (the
real code runs unchanged; only the wait is added). It writes $HOLD_SENTINEL and sleeps at:

    HOLD_AT_STEP=N   the save of checkpoint-N, just before its completion marker (everything of that checkpoint
                     on disk but the marker, as a kill during a save leaves it)
    HOLD_FINAL=1     the save of the final model, after its weights and config, before its processor files
                     (a half-written final model)
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from internvl_exp.train.checkpointing import checkpoints  # noqa: E402

SENTINEL = Path(os.environ["HOLD_SENTINEL"])


def hold(where: object) -> None:
    SENTINEL.write_text(str(where))
    time.sleep(600)


if os.environ.get("HOLD_AT_STEP"):
    HOLD_AT_STEP = int(os.environ["HOLD_AT_STEP"])
    _write_marker = checkpoints.write_marker

    def write_marker(path, info, **kwargs):
        if info.get("global_step") == HOLD_AT_STEP and Path(path).name.startswith("checkpoint"):
            hold(path)
        _write_marker(path, info, **kwargs)

    checkpoints.write_marker = write_marker

if os.environ.get("HOLD_FINAL"):
    from transformers.processing_utils import ProcessorMixin

    _save_pretrained = ProcessorMixin.save_pretrained

    def save_pretrained(self, save_directory, *args, **kwargs):
        if Path(save_directory).name.startswith("final"):
            hold(save_directory)
        return _save_pretrained(self, save_directory, *args, **kwargs)

    ProcessorMixin.save_pretrained = save_pretrained

sys.argv = [str(ROOT / "launch.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "launch.py"), run_name="__main__")
