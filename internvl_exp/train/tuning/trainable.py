"""Make a loaded model ready to train as the `freeze` and `model` configs say, in one fixed order:

1. drop-path on the vision layers that train (or all, with `model.drop_path_on_frozen`);
2. `requires_grad` per part (frozen / full, vit_last_n, embeddings);
3. frozen modules kept in eval mode at every forward (`freeze.frozen_mode=eval`);
4. LoRA (PEFT) on the `lora` parts, `full` parts as modules_to_save; the base model is saved first if asked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from internvl_exp.config.schema import FreezeConfig, ModelConfig
from internvl_exp.models.registry import Family
from internvl_exp.train.tuning.freeze import (
    FreezePlan,
    check_tied_embeddings,
    freeze_plan,
    frozen_module_names,
    keep_frozen_in_eval,
    num_vision_layers,
    set_requires_grad,
    trainable_vision_layers,
)
from internvl_exp.train.tuning.lora import apply_lora, save_base_model

log = logging.getLogger(__name__)


@dataclass
class TrainableSetup:
    model: nn.Module  # the model to train (a PeftModel when a part is in `lora` mode)
    plan: FreezePlan
    drop_path_rates: list[float] = field(default_factory=list)  # per vision layer, 0.0 where none
    eval_modules: list[str] = field(default_factory=list)  # modules kept in eval mode


def make_trainable(
    model: nn.Module, family: Family, freeze_cfg: FreezeConfig, model_cfg: ModelConfig, save_base_to: Path | None = None
) -> TrainableSetup:
    """Apply drop-path, freezing, eval-mode hooks and LoRA. `save_base_to`: save the untouched base model there
    before LoRA (when the base cannot be reloaded later, e.g. the random tiny model)."""
    plan = freeze_plan(freeze_cfg)
    check_tied_embeddings(model, plan)
    n_layers = num_vision_layers(model, family)
    train_layers = trainable_vision_layers(plan, n_layers)

    rates: list[float] = []
    rate = float(getattr(model_cfg, "drop_path_rate", 0.0) or 0.0)
    if rate > 0.0:
        from internvl_exp.train.tuning.drop_path import add_vision_drop_path

        on_frozen = bool(getattr(model_cfg, "drop_path_on_frozen", False))
        rates = add_vision_drop_path(model, family, rate, range(n_layers) if on_frozen else train_layers)
        if not any(rates):
            log.warning(
                "model.drop_path_rate=%s has no effect: no vision layer trains under freeze.parts.vision=%s "
                "(set model.drop_path_on_frozen=true freeze.frozen_mode=train for InternVL's behaviour)",
                rate, plan.modes["vision"],
            )

    set_requires_grad(model, family, plan)
    eval_modules = frozen_module_names(model, family, plan) if plan.frozen_mode == "eval" else []
    keep_frozen_in_eval(model, eval_modules)

    if plan.uses_lora:
        if save_base_to is not None:
            save_base_model(model, save_base_to)
        model = apply_lora(model, family, plan, freeze_cfg.lora)
        # PEFT freezes everything but adapters and modules_to_save; re-apply the plan for the finer rules
        # (e.g. frozen embeddings inside a fully trained LLM copy).
        set_requires_grad(model, family, plan)
    return TrainableSetup(model=model, plan=plan, drop_path_rates=rates, eval_modules=eval_modules)
