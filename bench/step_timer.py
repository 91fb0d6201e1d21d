"""Run a Python script with a clock on every training step of any HF `Trainer` inside it (bench helper).

    STEP_TIMES=/tmp/t.json python bench/step_timer.py launch.py trainer.max_steps=40 ...

Both sides of a comparison (launch.py and a hand-written Trainer script) are timed by the same hook: the wall
clock (time.time(), comparable with log time stamps) at the end of each optimizer step, taken where the Trainer
calls its callbacks' on_step_end. The hook patches `transformers.trainer_callback` when that module is first
imported, so the script's own imports are not moved earlier (start-up timings stay honest). At exit the list
goes to $STEP_TIMES as JSON: {"step_end": [t1, t2, ...], "process_start": t0}.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import json
import os
import runpy
import sys
import time

PROCESS_START = time.time()
STEP_ENDS: list[float] = []


def _patch(module) -> None:
    handler = module.CallbackHandler
    original = handler.on_step_end

    def on_step_end(self, args, state, control):
        STEP_ENDS.append(time.time())
        return original(self, args, state, control)

    handler.on_step_end = on_step_end


class _Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "transformers.trainer_callback":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        loader.exec_module = exec_and_patch
        return spec


def _dump() -> None:
    out = os.environ.get("STEP_TIMES")
    if out:
        with open(out, "w") as f:
            json.dump({"process_start": PROCESS_START, "step_end": STEP_ENDS}, f)


def main() -> None:
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    sys.meta_path.insert(0, _Watch())
    atexit.register(_dump)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
