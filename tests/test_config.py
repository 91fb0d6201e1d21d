"""The config tree: every option of every group composes; typos and bad values fail early and clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from hydra.errors import ConfigCompositionException

from conftest import CONF, ROOT, compose, run_launch

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# Options that train on the user's own data need its path: data=meta and every recipe in experiment/.
USER_DATA = ["data.meta_path=/data/meta.json"]
# Options that compose but, alone, must refuse to run, with the rule that says what to set.
NEEDS_MORE = {
    ("model", "local"): ["model.path: model=local loads", "model.template: not set"],
    ("model", "internvl3_5_gpt_oss_20b_a4b"): ["model.template: 'internvl3_5_gpt_oss' is not one of"],
    # Pairs and conversations do not mix: the default objective (sft) and data (demo) each need the other's match.
    ("data", "demo_pref"): ["data=demo_pref: holds preference pairs"],
    ("objective", "dpo"): ["data=demo: the SFT demo"],
    ("objective", "mpo"): ["data=demo: the SFT demo"],
}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_validates(group, option, tmp_path):
    from internvl_exp.config.validate import ConfigError, validate

    extra = USER_DATA if group == "experiment" or (group, option) == ("data", "meta") else []
    cfg = compose([f"{group}={option}", *extra], tmp_path)
    assert OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if (group, option) in NEEDS_MORE:
        with pytest.raises(ConfigError) as e:
            validate(cfg)
        assert all(rule in str(e.value) for rule in NEEDS_MORE[group, option]), str(e.value)
    else:
        validate(cfg)


def test_groups_required_by_the_design_exist():
    for group in ("model", "data", "freeze", "deepspeed", "optimizer", "trainer", "logger", "distributed", "paths"):
        assert group in GROUPS
    assert {"vision", "llm", "mlp_only", "full"} <= set(_options("freeze"))
    assert {"none", "tensorboard", "wandb"} <= set(_options("logger"))
    assert {"demo", "mix"} <= set(_options("data"))


def test_typo_in_a_key_fails_at_composition(tmp_path):
    with pytest.raises(ConfigCompositionException) as e:
        compose(["optimizer.lrr=1"], tmp_path)
    assert "lrr" in str(e.value.__cause__ or e.value)


def test_wrong_type_fails_at_composition(tmp_path):
    with pytest.raises(ConfigCompositionException) as e:
        compose(["trainer.max_steps=abc"], tmp_path)
    assert "max_steps" in str(e.value.__cause__ or e.value)


def test_cross_group_validation_names_the_key(tmp_path):
    from internvl_exp.config.validate import ConfigError, validate

    cfg = compose(["freeze.parts.vision=sometimes", "data.on_error=maybe"], tmp_path)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "freeze.parts.vision" in str(e.value) and "data.on_error" in str(e.value)


def test_run_dir_layout_in_config(tmp_path):
    cfg = compose(["experiment_name=exp1", "run_name=r1"], tmp_path, )
    assert cfg.experiment_name == "exp1"
    assert str(cfg.paths.output_dir).endswith("outputs")


_PROBE = """
import runpy, sys
sys.argv = ["launch.py", *sys.argv[1:]]
try:
    runpy.run_path({launch!r}, run_name="__main__")
except SystemExit:
    pass
heavy = [m for m in ("torch", "transformers", "deepspeed", "peft", "wandb") if m in sys.modules]
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--cfg", "job"], ["--help"], ["--cfg", "job", "--resolve"]])
def test_fast_edge_does_not_import_torch(args):
    probe = _PROBE.format(launch=str(ROOT / "launch.py"))
    res = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "HEAVY=\n" in res.stderr or res.stderr.rstrip().endswith("HEAVY="), res.stderr


def test_help_lists_groups_and_options():
    res = run_launch(["--help"])
    assert res.returncode == 0
    for line in ("freeze: full, llm, lora_all, lora_llm, mlp_only, vision, vit_last_n",
                 "logger: none, tensorboard, wandb"):
        assert line in res.stdout
    assert "model: internvl2_1b, internvl2_26b" in res.stdout and "local" in res.stdout and "tiny" in res.stdout


def test_unknown_model_fails_clearly():
    res = run_launch(["model=internvl9_8b", "--cfg", "job"])
    assert res.returncode != 0
    assert "model/internvl9_8b" in res.stderr
    assert "Available options in 'model'" in res.stderr
    assert "Traceback" not in res.stderr


def test_cfg_job_snapshot_of_headline_command():
    """`--cfg job` for the default run prints the composed groups (a stable snapshot of key choices)."""
    res = run_launch(["--cfg", "job"])
    assert res.returncode == 0
    cfg = OmegaConf.create(res.stdout)
    assert cfg.model.name == "tiny" and cfg.data.name == "demo" and cfg.freeze.name == "vision"
    assert dict(cfg.freeze.parts) == {"vision": "frozen", "projector": "full", "llm": "full", "lm_head": "full"}
    assert cfg.deepspeed.name == "none" and cfg.optimizer.name == "adamw" and cfg.logger.name == "none"
    assert cfg.distributed.name == "single" and cfg.trainer.name == "default"


def test_bad_wandb_mode_fails_before_anything_loads(tmp_path):
    from internvl_exp.config.validate import ConfigError, validate

    with pytest.raises(ConfigError) as e:
        validate(compose(["logger=wandb", "logger.wandb.mode=onlin"], tmp_path))
    assert "logger.wandb.mode" in str(e.value)
