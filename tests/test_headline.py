"""The headline command composes the real model's recipe, not the tiny demo's (snapshot of `--cfg job`), for one
preset of each release; `model=tiny` keeps the demo's values. The expected numbers are the official scripts'
(docs/models.md lists each script)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import run_launch

# preset -> (lr, max_seq_length): every one of these trains bf16 with activation checkpointing, wd 0.05, 3% warmup.
RELEASES = {
    "internvl2_8b": (4e-5, 4096),
    "internvl2_5_8b": (4e-5, 8192),
    "internvl3_8b": (2e-5, 16384),
    "internvl3_5_8b": (8e-5, 32768),
}


def test_the_headline_command_trains_internvl2_8b_by_its_recipe():
    r = run_launch(["model=internvl2_8b", "data=mix", "freeze=vision", "--cfg", "job"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for line in ("  lr: 4.0e-05  # recipe internvl2_8b", "  bf16: true  # recipe internvl2_8b",
                 "  max_seq_length: 4096  # recipe internvl2_8b",
                 "  activation_checkpointing: true  # recipe internvl2_8b",
                 "  weight_decay: 0.05  # recipe internvl2_8b", "  warmup_ratio: 0.03  # recipe internvl2_8b"):
        assert line in lines, line
    spec = OmegaConf.create(r.stdout)
    assert spec.model.max_dynamic_patch == 6 and spec.model.drop_path_rate == 0.1
    assert spec.model.dtype == "float32"  # bf16 autocast over fp32 master weights without DeepSpeed


@pytest.mark.parametrize("preset", sorted(RELEASES))
def test_one_preset_of_each_release_resolves_its_recipe(preset):
    from internvl_exp.launch.precheck import compose_config

    spec = compose_config([f"model={preset}", "data=mix", "freeze=vision"], check=True)
    lr, seq = RELEASES[preset]
    assert (spec.optimizer.lr, spec.data.max_seq_length) == (lr, seq)
    assert spec.trainer.bf16 is True and spec.trainer.activation_checkpointing is True
    assert (spec.optimizer.weight_decay, spec.optimizer.warmup_ratio, spec.optimizer.scheduler) == (0.05, 0.03, "cosine")
    assert spec.resolved.origins["optimizer.lr"] == f"recipe {preset}"


def test_the_tiny_demo_keeps_its_own_values():
    from internvl_exp.launch.precheck import compose_config

    spec = compose_config([], check=True)
    assert (spec.optimizer.lr, spec.optimizer.weight_decay, spec.optimizer.warmup_ratio) == (2e-3, 0.0, 0.05)
    assert (spec.data.max_seq_length, spec.trainer.bf16, spec.trainer.activation_checkpointing) == (512, False, False)
    assert spec.model.dtype == "float32" and spec.trainer.chunked_loss == "false"


def test_a_users_value_wins_over_the_recipe_and_says_so():
    from internvl_exp.launch.precheck import compose_config

    spec = compose_config(["model=internvl2_8b", "optimizer.lr=1e-5", "trainer.bf16=false"], check=True)
    assert spec.optimizer.lr == 1e-5 and spec.trainer.bf16 is False
    assert spec.resolved.origins["optimizer.lr"] == "override" == spec.resolved.origins["trainer.bf16"]
    assert spec.resolved.origins["data.max_seq_length"] == "recipe internvl2_8b"
