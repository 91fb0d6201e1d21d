"""Every freeze= option, trained for real steps on the tiny model with the real Trainer: exactly the intended
parameters change, every frozen one stays bit-identical, and the optimizer holds exactly the trainable ones."""

from __future__ import annotations

import re

import pytest

from conftest import CONF
from training_helpers import build, changed, quick_cfg, snapshot, train

V, P, L, H = r"model\.vision_tower\.", r"model\.multi_modal_projector\.", r"model\.language_model\.", r"lm_head\."
PEFT = r"base_model\.model\."
LLM_LORA = PEFT + r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.default\.weight$"
VIT_LORA = PEFT + r"model\.vision_tower\.encoder\.layer\.\d+\.(attention|mlp)\.(\w+_proj|projection_layer|fc1|fc2)\.lora_[AB]\.default\.weight$"
SAVED = r"\.modules_to_save\.default\."

# option -> (extra overrides, regexes of the parameters that must train, regexes excluded from those)
CASES = {
    "full": ([], [V, P, L, H], []),
    "vision": ([], [P, L, H], []),
    "llm": ([], [V, P], []),
    "mlp_only": ([], [P], []),
    # the tiny ViT has 2 layers: N=1 leaves layer 0 and the embeddings frozen
    "vit_last_n": (["freeze.vit_last_n=1"], [V + r"encoder\.layer\.1\.", P, L, H], []),
    "lora_llm": ([], [LLM_LORA], []),
    "lora_all": ([], [LLM_LORA, VIT_LORA], []),
    # variants: parts chosen alongside LoRA, the embeddings sub-part, activation checkpointing
    "lora_llm+projector+head": (
        ["freeze=lora_llm", "freeze.parts.projector=full", "freeze.parts.lm_head=full"],
        [LLM_LORA, PEFT + r"model\.multi_modal_projector" + SAVED, PEFT + r"lm_head" + SAVED],
        [],
    ),
    "lora_llm+vit_last_n": (
        ["freeze=lora_llm", "freeze.vit_last_n=1"], [LLM_LORA, PEFT + V + r"encoder\.layer\.1" + SAVED], []
    ),
    "lora_all+full_llm": (  # LoRA on the ViT only, the whole LLM (a modules_to_save copy) and head trained fully
        ["freeze=lora_all", "freeze.parts.llm=full", "freeze.parts.lm_head=full"],
        [VIT_LORA, PEFT + r"model\.language_model" + SAVED, PEFT + r"lm_head" + SAVED],
        [],
    ),
    "vision+frozen_embeddings": (["freeze=vision", "freeze.embeddings=frozen"], [P, L, H], [L + r"embed_tokens\."]),
    "vit_last_n+checkpointing": (
        ["freeze=vit_last_n", "freeze.vit_last_n=1", "trainer.activation_checkpointing=true"],
        [V + r"encoder\.layer\.1\.", P, L, H],
        [],
    ),
    "lora_all+checkpointing": (["freeze=lora_all", "trainer.activation_checkpointing=true"], [LLM_LORA, VIT_LORA], []),
}


def _expected(name: str, include: list[str], exclude: list[str]) -> bool:
    return any(re.match(p, name) for p in include) and not any(re.match(p, name) for p in exclude)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, demo_dir, tokenizer):
    from conftest import compose
    from internvl_exp.data.from_config import build_from_config

    cfg = compose([], tmp_path_factory.mktemp("data"), demo_dir)
    return build_from_config(cfg, tokenizer, 16)[0]


def test_every_freeze_option_is_covered():
    options = {p.stem for p in (CONF / "freeze").glob("*.yaml")}
    assert options == {c for c in CASES if "+" not in c}


# The default, everything trained and LoRA run in the fast layer; the other cases are each one more training.
FAST_CASES = {"vision", "full", "lora_llm"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in FAST_CASES else pytest.mark.slow)
                                  for c in sorted(CASES)])
def test_one_real_step_changes_exactly_the_intended_parameters(case, dataset, tokenizer, tmp_path, demo_dir):
    from internvl_exp.train.tuning.optim import parameter_groups

    overrides, include, exclude = CASES[case]
    option = case.split("+")[0]
    cfg = quick_cfg([f"freeze={option}", *overrides], tmp_path, demo_dir)
    family, setup = build(cfg, tokenizer)
    model = setup.model
    intended = {n for n, _ in model.named_parameters() if _expected(n, include, exclude)}
    assert intended, case
    assert {n for n, p in model.named_parameters() if p.requires_grad} == intended

    before = snapshot(model)
    planned = parameter_groups(model, family, cfg.optimizer)
    trainer = train(cfg, model, family, dataset, tokenizer, tmp_path)
    assert trainer.state.global_step == 2

    # trained tensors moved, every other tensor is bit-identical
    assert changed(before, model) == intended
    # the optimizer holds exactly the trainable tensors, in our named groups with their lr / weight decay
    held = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if n in intended}
    got = sorted((g["name"], g["initial_lr"], g["weight_decay"], len(g["params"])) for g in trainer.optimizer.param_groups)
    want = sorted((g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in planned)
    assert got == want


def test_lora_targets_never_touch_the_vision_tower_under_lora_llm(tokenizer, tmp_path, demo_dir):
    """The ViT's attention has q_proj/k_proj/v_proj too: LoRA on the LLM must leave them alone."""
    cfg = quick_cfg(["freeze=lora_llm"], tmp_path, demo_dir)
    _, setup = build(cfg, tokenizer)
    lora_modules = {n.rsplit(".lora_", 1)[0] for n, _ in setup.model.named_parameters() if ".lora_" in n}
    assert lora_modules and not any("vision_tower" in n for n in lora_modules)
    # 7 projections x 2 decoder layers
    assert len(lora_modules) == 7 * cfg.model.arch.text.num_hidden_layers
    assert setup.model.peft_config["default"].r == 16


def test_lora_settings_come_from_config(tokenizer, tmp_path, demo_dir):
    cfg = quick_cfg(
        ["freeze=lora_all", "freeze.lora.r=4", "freeze.lora.alpha=8", "freeze.lora.dropout=0.0",
         "freeze.lora.llm_targets=[self_attn.q_proj,self_attn.v_proj]", "freeze.lora.vision_targets=[mlp.fc1]"],
        tmp_path, demo_dir,
    )
    _, setup = build(cfg, tokenizer)
    lora_modules = sorted({n.rsplit(".lora_", 1)[0].removeprefix("base_model.model.model.")
                           for n, _ in setup.model.named_parameters() if ".lora_" in n})
    assert lora_modules == [
        "language_model.layers.0.self_attn.q_proj", "language_model.layers.0.self_attn.v_proj",
        "language_model.layers.1.self_attn.q_proj", "language_model.layers.1.self_attn.v_proj",
        "vision_tower.encoder.layer.0.mlp.fc1", "vision_tower.encoder.layer.1.mlp.fc1",
    ]
    a = setup.model.base_model.model.model.language_model.layers[0].self_attn.q_proj
    assert a.r["default"] == 4 and a.scaling["default"] == 2.0  # alpha / r


def test_frozen_parts_run_in_eval_mode_during_training(tokenizer, tmp_path, demo_dir, dataset):
    """freeze.frozen_mode=eval: after the Trainer's model.train(), a forward switches frozen modules to eval;
    layer containers under activation checkpointing keep train mode so they are still checkpointed."""
    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer

    cfg = quick_cfg(["freeze=llm", "trainer.activation_checkpointing=true", "trainer.max_steps=1"], tmp_path, demo_dir)
    family, setup = build(cfg, tokenizer)
    model = setup.model
    assert setup.eval_modules == ["model.language_model", "lm_head"]
    train(cfg, model, family, dataset, tokenizer, tmp_path)
    llm = model.model.language_model
    for m in llm.modules():
        if isinstance(m, GradientCheckpointingLayer):
            assert m.training and m.gradient_checkpointing
        else:
            assert not m.training, type(m).__name__
    assert model.model.vision_tower.training and model.model.multi_modal_projector.training

    # frozen_mode=train (InternVL's behaviour): nothing is switched, a forward leaves the frozen LLM training
    from internvl_exp.data.collator import Collator

    cfg = quick_cfg(["freeze=llm", "freeze.frozen_mode=train"], tmp_path, demo_dir)
    family, setup = build(cfg, tokenizer)
    assert setup.eval_modules == []
    setup.model.train()
    with torch.no_grad():
        setup.model(**Collator(tokenizer.pad_token_id)([dataset[0]]))
    assert all(m.training for m in setup.model.model.language_model.modules())


def test_tied_lm_head_and_embeddings_must_share_a_mode(tokenizer, tmp_path, demo_dir):
    """A checkpoint that ties lm_head to the input embeddings has one tensor for both parts."""
    from internvl_exp.models.loading import load_model
    from internvl_exp.models.registry import get_family
    from internvl_exp.train.tuning.freeze import apply_freeze

    cfg = quick_cfg(["freeze=vision", "freeze.embeddings=frozen"], tmp_path, demo_dir)
    model = load_model(cfg.model, tokenizer)
    model.lm_head.weight = model.get_input_embeddings().weight  # tie, as tie_word_embeddings checkpoints do
    family = get_family(cfg.model.family)
    with pytest.raises(ValueError, match="set freeze.embeddings to the same mode as freeze.parts.lm_head"):
        apply_freeze(model, family, cfg.freeze)
    apply_freeze(model, family, quick_cfg(["freeze=vision"], tmp_path, demo_dir).freeze)  # both full: fine
    assert model.lm_head.weight.requires_grad
