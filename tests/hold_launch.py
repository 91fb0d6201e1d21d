"""`python launch.py ARGS`, except that the save of checkpoint-$HOLD_AT_STEP stops just before its completion
marker: it writes $HOLD_SENTINEL and sleeps, so a test can kill -9 the run at exactly that point (everything of
that checkpoint on disk but the marker, as a kill during a save leaves it). The real code runs unchanged."""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from internvl_exp.train.checkpointing import checkpoints  # noqa: E402

HOLD_AT_STEP = int(os.environ["HOLD_AT_STEP"])
SENTINEL = Path(os.environ["HOLD_SENTINEL"])
_write_marker = checkpoints.write_marker


def write_marker(path, info):
    if info["global_step"] == HOLD_AT_STEP:
        SENTINEL.write_text(str(path))
        time.sleep(600)
    _write_marker(path, info)


checkpoints.write_marker = write_marker
sys.argv = [str(ROOT / "launch.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "launch.py"), run_name="__main__")
