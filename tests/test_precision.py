"""model.dtype and mixed precision (config/precision.py): fp32 master weights unless pure half precision is asked
for by name; the real presets load bf16 only where DeepSpeed keeps the fp32 master copy."""

from __future__ import annotations

import pytest

from conftest import compose


def _problems(overrides, tmp_path):
    from internvl_exp.config.validate import config_problems

    return config_problems(compose(overrides, tmp_path))


@pytest.mark.parametrize("overrides, expected", [
    ([], "float32"),
    (["trainer.bf16=true"], "float32"),  # autocast over fp32 master weights
    (["deepspeed=zero2", "trainer.bf16=true"], "bfloat16"),  # DeepSpeed holds the fp32 master copy
    (["deepspeed=zero3", "trainer.bf16=false"], "float32"),  # no bf16 training: nothing to halve
    (["deepspeed=zero3"], "bfloat16"),  # the preset's recipe trains in bf16
    (["model.dtype=bfloat16", "deepspeed=zero2", "trainer.bf16=true"], "bfloat16"),
])
def test_auto_resolves_to_fp32_master_weights_unless_deepspeed_keeps_them(overrides, expected, tmp_path):
    from internvl_exp.config.precision import weights_dtype

    cfg = compose(["model=internvl2_5_8b", *overrides], tmp_path)
    assert weights_dtype(cfg) == expected
    assert not [p for p in _problems(["model=internvl2_5_8b", *overrides], tmp_path) if "dtype" in p]


def test_every_real_preset_defaults_to_auto():
    from conftest import CONF
    import yaml

    for path in (CONF / "model").glob("*.yaml"):
        if path.stem != "tiny":
            assert yaml.safe_load(path.read_text())["dtype"] == "auto", path.name


def test_pure_bf16_is_refused_unless_asked_for(tmp_path):
    problems = _problems(["model.dtype=bfloat16", "trainer.bf16=true"], tmp_path)
    assert any("trainer.pure_half_precision=true" in p and "model.dtype=bfloat16" in p for p in problems), problems
    accepted = _problems(["model.dtype=bfloat16", "trainer.bf16=true", "trainer.pure_half_precision=true"], tmp_path)
    assert not [p for p in accepted if "dtype" in p]
    assert any("not one of" in p for p in _problems(["model.dtype=fp8"], tmp_path))


def test_deepspeed_stage_without_its_json_is_an_error(tmp_path):
    problems = _problems(["deepspeed.stage=3"], tmp_path)
    assert any("deepspeed.stage=3 has no deepspeed.config.zero_optimization" in p for p in problems), problems
