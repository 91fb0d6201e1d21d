"""Each freeze= option leaves exactly the intended parts trainable (the parts registry, not module paths)."""

from __future__ import annotations

import pytest

from conftest import compose

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
    from internvl_exp.train.tuning.freeze import apply_freeze
    from internvl_exp.train.reporting.param_report import parameter_report

    cfg = compose([f"freeze={option}"], tmp_path)
    family = get_family(cfg.model.family)
    apply_freeze(tiny_model, family, cfg.freeze)
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


def test_part_names_see_through_peft_wrappers():
    from internvl_exp.models.registry import get_family

    family = get_family("internvl_hf")
    peft = "base_model.model."
    assert family.part_of(peft + "model.multi_modal_projector.modules_to_save.default.linear_1.weight") == "projector"
    assert family.part_of(peft + "model.multi_modal_projector.original_module.linear_1.weight") == "projector"
    assert family.part_of(peft + "model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight") == "llm"
    assert family.part_of(peft + "lm_head.modules_to_save.default.weight") == "lm_head"
    assert family.is_embeddings(peft + "model.language_model.embed_tokens.weight")
    assert not family.is_embeddings("model.language_model.embed_tokens_extra.weight")
    assert family.vision_layer_index(peft + "model.vision_tower.encoder.layer.11.modules_to_save.default.mlp.fc1.weight") == 11
    assert family.vision_layer_index("model.vision_tower.embeddings.cls_token") is None
    with pytest.raises(KeyError, match="belongs to no part"):
        family.part_of("model.somewhere_else.weight")


def test_lora_regex_is_anchored_per_tower():
    """Identically named projections in both towers: each regex fullmatches only its own tower's modules."""
    import re

    from internvl_exp.models.registry import get_family

    family = get_family("internvl_hf")
    llm_only = family.lora_target_regex(family.llm_lora_targets, None)
    assert re.fullmatch(llm_only, "model.language_model.layers.3.self_attn.q_proj")
    assert re.fullmatch(llm_only, "model.language_model.layers.3.mlp.down_proj")
    assert not re.fullmatch(llm_only, "model.vision_tower.encoder.layer.3.attention.q_proj")
    assert not re.fullmatch(llm_only, "model.language_model.layers.3.self_attn.q_proj.base_layer")
    both = family.lora_target_regex(family.llm_lora_targets, family.vision_lora_targets)
    assert re.fullmatch(both, "model.vision_tower.encoder.layer.3.attention.q_proj")
    assert re.fullmatch(both, "model.vision_tower.encoder.layer.0.mlp.fc2")
    assert not re.fullmatch(both, "model.multi_modal_projector.linear_1")
    assert not re.fullmatch(both, "lm_head")
