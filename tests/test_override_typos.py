"""A mistyped override key: one line naming the key, the close match and the valid names, before Hydra composes
(launch/overrides.py), through the real launch.py and the validate tool; nothing is written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, run_launch


@pytest.mark.parametrize("override, first_line, names", [
    ("optimizer.lrr=1", "optimizer.lrr: not a key of optimizer; did you mean optimizer.lr?", ["weight_decay"]),
    ("fretze=vision", "fretze=vision: no config group or top-level key of that name; did you mean freeze?",
     ["the groups are data, deepspeed, distributed, experiment, freeze,", "run_name"]),
    ("model.arch.text.hidden_sz=3", "model.arch.text.hidden_sz: not a key of model.arch.text; "
     "did you mean model.arch.text.hidden_size?", ["num_hidden_layers"]),
])
def test_typo_gets_one_line_with_the_suggestion(tmp_path, override, first_line, names):
    res = run_launch([override, f"paths.output_dir={tmp_path}"])
    assert res.returncode == 1
    out = (res.stdout + res.stderr).strip()
    assert out.startswith(first_line) and "\n" not in out, out
    assert all(n in out for n in names), out
    assert "+optimizer" not in out and "To append" not in out and "HYDRA_FULL_ERROR" not in out
    assert not any(tmp_path.iterdir())  # no run directory


def test_valid_and_unjudgeable_keys_are_left_alone(tmp_path):
    # A free-form mapping takes new keys with +; a sweep of valid keys composes (--cfg job validates only).
    res = run_launch(["optimizer.lr=1e-3", "+optimizer.scheduler_kwargs.foo=1", "experiment_name=x",
                      "model.arch.text.hidden_size=64", "--cfg", "job"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "foo: 1" in res.stdout


def test_validate_tool_says_the_same():
    res = subprocess.run([sys.executable, "-m", "internvl_exp.tools.validate", "trainer.max_stepz=3"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "did you mean trainer.max_steps?" in res.stdout + res.stderr
