"""Each freeze= option leaves exactly the intended parts trainable (the parts registry, not module paths)."""

from __future__ import annotations

import pytest

from conftest import CONF, compose

EXPECTED = {
    "vision": {"projector", "llm", "lm_head"},
    "llm": {"vision", "projector"},
    "mlp_only": {"projector"},
    "full": {"vision", "projector", "llm", "lm_head"},
}


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    from internvl_exp.models.loading import load_model

    return load_model(compose().model, tokenizer)


@pytest.mark.parametrize("option", sorted(EXPECTED))
def test_freeze_option_trains_exactly_its_parts(option, tiny_model, tmp_path):
    from internvl_exp.models.registry import get_family
    from internvl_exp.train.freeze import apply_freeze, parameter_report

    cfg = compose([f"freeze={option}"], tmp_path)
    family = get_family(cfg.model.family)
    apply_freeze(tiny_model, family, dict(cfg.freeze.parts))
    report = parameter_report(tiny_model, family)
    trainable = {p for p in ("vision", "projector", "llm", "lm_head") if report[p]["trainable"]}
    assert trainable == EXPECTED[option]
    for part in trainable:
        assert report[part]["trainable"] == report[part]["total"]
    for name, param in tiny_model.named_parameters():
        assert param.requires_grad == (family.part_of(name) in EXPECTED[option]), name


def test_every_parameter_belongs_to_a_part(tiny_model):
    from internvl_exp.models.registry import get_family

    family = get_family("internvl_hf")
    parts = {family.part_of(n) for n, _ in tiny_model.named_parameters()}
    assert parts == {"vision", "projector", "llm", "lm_head"}
