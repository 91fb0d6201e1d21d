"""How our commands end (internvl_exp/shutdown.py): a rank of a distributed launch skips the interpreter's
teardown, where gloo's threads can abort it after a run that succeeded; every other process exits as usual."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

COMMAND = """
import atexit, sys
from internvl_exp.shutdown import finish
if sys.argv[1] == "distributed":
    import torch.distributed  # noqa: F401
atexit.register(lambda: print("teardown ran", flush=True))
print("logged")  # block-buffered into a pipe: lost unless flushed
outcome = sys.argv[2]
def main():
    if outcome == "message":
        raise SystemExit("error: the key is wrong")
    return {"none": None, "three": 3}[outcome]
finish(main)
"""


@pytest.mark.parametrize("where", ["distributed", "plain"])
@pytest.mark.parametrize("outcome, status", [("none", 0), ("three", 3), ("message", 1)])
def test_finish_exits_with_the_command_status_and_skips_teardown_only_in_a_rank(where, outcome, status):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LOCAL_RANK", None)
    env.pop("PYTHONUNBUFFERED", None)  # buffered output, as under a scheduler: the flush is part of what is checked
    if where == "distributed":
        env["LOCAL_RANK"] = "0"  # what torchrun sets in every rank
    proc = subprocess.run([sys.executable, "-c", COMMAND, where, outcome], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == status, proc.stderr
    assert "logged" in proc.stdout  # flushed before the process ended
    assert ("teardown ran" in proc.stdout) == (where == "plain")
    assert ("error: the key is wrong" in proc.stderr) == (outcome == "message")
