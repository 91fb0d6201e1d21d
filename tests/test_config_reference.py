"""docs/config-reference.md is generated from conf/ and the schema: regenerating it must change nothing, and it
must name every key of the composed default config and every option of every group."""

from __future__ import annotations

import subprocess
import sys

from omegaconf import OmegaConf

from conftest import CONF, ROOT, compose

from internvl_exp.tools.config_reference import OUT, render


def _leaves(node, prefix=""):
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in ("config", "variants", "datasets", "parts", "hub", "scheduler_kwargs",
                                                    "part_lr_scale"):
            yield from _leaves(v, key + ".")
        else:
            yield key


def test_reference_is_up_to_date():
    assert OUT.read_text() == render(), "docs/config-reference.md is stale: run python -m internvl_exp.tools.config_reference"


def test_reference_names_every_key_and_option():
    text = OUT.read_text()
    cfg = OmegaConf.to_container(compose(["logger=wandb"], resolved=False), resolve=False)  # the settings
    cfg.pop("hydra", None)
    for key in _leaves(cfg):
        assert f"`{key}`" in text, key
    for group in (p for p in CONF.iterdir() if p.is_dir()):
        for option in group.glob("*.yaml"):
            assert f"`{group.name}={option.stem}`" in text, (group.name, option.stem)


def test_check_flag_detects_drift(tmp_path):
    stale = tmp_path / "ref.md"
    stale.write_text(render().replace("trainer.planner_mfu", "trainer.renamed"))
    cmd = [sys.executable, "-m", "internvl_exp.tools.config_reference", "--check", "--out"]
    assert subprocess.run([*cmd, str(stale)], cwd=ROOT, capture_output=True).returncode == 1
    assert subprocess.run([*cmd, str(OUT)], cwd=ROOT, capture_output=True).returncode == 0
