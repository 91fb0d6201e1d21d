"""Optimizer parameter groups by name (decay, per-part lr, ViT layer decay), fused AdamW, and the schedules."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import compose
from training_helpers import build

LR = 1e-3


def _groups_by_param(cfg, tokenizer):
    from internvl_exp.train.tuning.optim import parameter_groups

    family, setup = build(cfg, tokenizer)
    groups = parameter_groups(setup.model, family, cfg.optimizer)
    by_name = {n: g for g in groups for n in g["names"]}
    return setup.model, groups, by_name


def test_weight_decay_and_lr_per_parameter(tokenizer, tmp_path):
    cfg = compose(
        ["freeze=full", f"optimizer.lr={LR}", "optimizer.weight_decay=0.1",
         "+optimizer.part_lr_scale={vision: 0.1, embeddings: 0.5, lm_head: 2.0}", "optimizer.vision_layer_decay=0.5"],
        tmp_path,
    )
    model, groups, g = _groups_by_param(cfg, tokenizer)
    assert set(g) == {n for n, p in model.named_parameters() if p.requires_grad}  # every trainable one, once
    assert groups[0]["lr"] == LR  # HF logs the first group's lr: a base-lr group comes first
    assert sum(len(x["names"]) for x in groups) == len(g)

    def check(name, wd, lr):
        assert g[name]["weight_decay"] == wd, name
        assert g[name]["lr"] == pytest.approx(lr), name

    llm = "model.language_model."
    check(llm + "layers.0.self_attn.q_proj.weight", 0.1, LR)
    check(llm + "layers.0.self_attn.q_proj.bias", 0.0, LR)
    check(llm + "layers.1.input_layernorm.weight", 0.0, LR)
    check(llm + "norm.weight", 0.0, LR)
    check(llm + "embed_tokens.weight", 0.0, 0.5 * LR)  # the embeddings sub-part: own scale, no decay
    check("lm_head.weight", 0.1, 2.0 * LR)
    check("model.multi_modal_projector.linear_1.weight", 0.1, LR)
    check("model.multi_modal_projector.layer_norm.weight", 0.0, LR)
    # ViT: 2 layers, decay 0.5: last layer at the vision lr, layer 0 x0.5, the stem x0.25
    vit = "model.vision_tower."
    check(vit + "encoder.layer.1.mlp.fc1.weight", 0.1, 0.1 * LR)
    check(vit + "encoder.layer.1.mlp.fc1.bias", 0.0, 0.1 * LR)
    check(vit + "encoder.layer.0.attention.q_proj.weight", 0.1, 0.05 * LR)
    check(vit + "encoder.layer.0.lambda_1", 0.0, 0.05 * LR)  # layer scale: a vector, no decay
    check(vit + "encoder.layer.0.layernorm_before.weight", 0.0, 0.05 * LR)
    check(vit + "embeddings.patch_embeddings.projection.weight", 0.1, 0.025 * LR)
    check(vit + "embeddings.position_embeddings", 0.0, 0.025 * LR)
    check(vit + "embeddings.cls_token", 0.0, 0.025 * LR)
    assert g[vit + "encoder.layer.0.attention.q_proj.weight"]["name"] == "vision.layer0"
    assert g[llm + "embed_tokens.weight"]["name"] == "embeddings.no_decay"


def test_embeddings_decay_when_configured(tokenizer, tmp_path):
    cfg = compose(["freeze=full", "optimizer.weight_decay=0.1", "optimizer.no_decay_embeddings=false"], tmp_path)
    _, _, g = _groups_by_param(cfg, tokenizer)
    assert g["model.language_model.embed_tokens.weight"]["weight_decay"] == 0.1
    assert g["model.vision_tower.embeddings.position_embeddings"]["weight_decay"] == 0.1
    assert g["model.language_model.layers.0.self_attn.q_proj.bias"]["weight_decay"] == 0.0


def test_groups_skip_frozen_parts_and_group_lora_by_part(tokenizer, tmp_path):
    cfg = compose(["freeze=lora_llm", "freeze.parts.projector=full", "+optimizer.part_lr_scale={projector: 3.0}"],
                  tmp_path)
    _, groups, _ = _groups_by_param(cfg, tokenizer)
    names = {x["name"]: x for x in groups}
    assert set(names) == {"llm", "projector", "projector.no_decay"}
    assert all(".lora_" in n for n in names["llm"]["names"])
    assert names["projector"]["lr"] == pytest.approx(3.0 * cfg.optimizer.lr)


@pytest.mark.parametrize("fused", [None, False])
def test_adamw_uses_the_fused_kernel_where_available(fused, tokenizer, tmp_path):
    from internvl_exp.train.tuning.optim import build_optimizer

    cfg = compose(["freeze=mlp_only", f"optimizer.fused={'null' if fused is None else 'false'}"], tmp_path)
    family, setup = build(cfg, tokenizer)
    opt = build_optimizer(setup.model, family, cfg.optimizer)
    assert isinstance(opt, torch.optim.AdamW)
    # torch >= 2.4 has a fused CPU AdamW: "auto" picks it here
    assert bool(opt.defaults["fused"]) == (fused is None)
    assert opt.defaults["betas"] == (0.9, 0.999)


def _factors(scheduler: str, extra: list[str], tmp_path, tokenizer, steps: int = 100):
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.args import training_arguments
    from internvl_exp.train.recipe.trainer import InternVLTrainer

    cfg = compose(["freeze=mlp_only", f"optimizer.scheduler={scheduler}", "optimizer.warmup_ratio=0.1",
                   "trainer.eval_strategy=no", *extra],
                  tmp_path)
    family, setup = build(cfg, tokenizer)
    trainer = InternVLTrainer(model=setup.model, args=training_arguments(cfg, RunDir(tmp_path / "r")),
                              family=family, optimizer_config=cfg.optimizer)
    trainer.create_optimizer()
    sched = trainer.create_scheduler(num_training_steps=steps)
    return [sched.lr_lambdas[0](s) for s in range(steps + 1)], trainer


SCHEDULES = {
    # name: extra overrides, {step: lr factor}
    "cosine": ([], {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.5, 100: 0.0}),
    "linear": ([], {5: 0.5, 10: 1.0, 55: 0.5, 100: 0.0}),
    "constant": ([], {0: 0.0, 5: 0.5, 10: 1.0, 60: 1.0, 100: 1.0}),  # warms up, unlike HF's plain "constant"
    "warmup_stable_decay": (["optimizer.decay_ratio=0.2", "optimizer.min_lr_ratio=0.1"],
                            {5: 0.55, 10: 1.0, 50: 1.0, 80: 1.0, 90: 0.55, 100: 0.1}),  # warms up from the floor
    "cosine_with_min_lr": (["optimizer.min_lr_ratio=0.1"], {10: 1.0, 55: 0.55, 100: 0.1}),
}


@pytest.mark.parametrize("scheduler", sorted(SCHEDULES))
def test_schedule_shapes(scheduler, tmp_path, tokenizer):
    extra, expected = SCHEDULES[scheduler]
    factors, trainer = _factors(scheduler, extra, tmp_path, tokenizer)
    for step, f in expected.items():
        assert factors[step] == pytest.approx(f, abs=1e-6), (scheduler, step, factors[step])
    if scheduler == "warmup_stable_decay":
        assert trainer.args.lr_scheduler_kwargs == {"num_decay_steps": 20, "min_lr_ratio": 0.1}


def test_clipping_warmup_and_checkpointing_reach_training_arguments(tmp_path):
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.args import training_arguments

    cfg = compose(["optimizer.max_grad_norm=0.5", "optimizer.warmup_ratio=0.03", "optimizer.scheduler=constant",
                   "trainer.activation_checkpointing=true"], tmp_path)
    args = training_arguments(cfg, RunDir(tmp_path / "r"))
    assert args.max_grad_norm == 0.5
    assert args.get_warmup_steps(1000) == math.ceil(0.03 * 1000)
    assert args.lr_scheduler_type == "constant_with_warmup"
    assert args.activation_checkpointing is True


def test_optimizer_config_validation_names_the_key(tmp_path):
    from internvl_exp.config.validate import ConfigError, validate

    cfg = compose(["+optimizer.part_lr_scale={vison: 0.1}", "optimizer.vision_layer_decay=1.5",
                   "optimizer.scheduler=warmup_stable_decay", "optimizer.warmup_ratio=0.5", "optimizer.decay_ratio=0.6"],
                  tmp_path)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert "optimizer.part_lr_scale.vison: unknown part" in msg
    assert "optimizer.vision_layer_decay" in msg
    assert "optimizer.warmup_ratio + optimizer.decay_ratio" in msg
