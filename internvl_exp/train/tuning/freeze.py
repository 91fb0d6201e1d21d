"""Freeze strategies in terms of parts: which parameters train, and how frozen modules run.

A `FreezePlan` is the resolved `freeze` config group. `set_requires_grad` applies it to a model (before or
after PEFT wrapping: names are mapped back to the base model through the family), and `keep_frozen_in_eval`
makes frozen modules deterministic (no dropout, attention dropout or drop-path) although the Trainer calls
`model.train()` before every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from internvl_exp.config.choices import PART_MODES, PARTS
from internvl_exp.config.schema import FreezeConfig
from internvl_exp.errors import ConfigError
from internvl_exp.models.registry import Family

if TYPE_CHECKING:  # torch and transformers only where a model is touched: the planner's cached path needs neither
    from torch import nn


@dataclass(frozen=True)
class FreezePlan:
    modes: Mapping[str, str]  # part -> frozen | full | lora
    embeddings: str  # frozen | full (resolved: never None)
    vit_last_n: int | None = None
    frozen_mode: str = "eval"

    @property
    def uses_lora(self) -> bool:
        return any(m == "lora" for m in self.modes.values())


def freeze_plan(freeze_cfg: FreezeConfig) -> FreezePlan:
    """The plan of a `freeze` config group, or of a plain {part: mode} mapping."""
    if isinstance(freeze_cfg, FreezePlan):
        return freeze_cfg
    if isinstance(freeze_cfg, Mapping) and "parts" not in freeze_cfg:
        freeze_cfg = {"parts": freeze_cfg}
    get = (lambda k, d=None: freeze_cfg.get(k, d)) if isinstance(freeze_cfg, Mapping) else (
        lambda k, d=None: getattr(freeze_cfg, k, d)
    )
    modes = dict(get("parts"))
    for part, mode in modes.items():
        if part not in PARTS or mode not in PART_MODES:
            raise ConfigError(f"freeze.parts.{part}: {mode!r} is not a valid mode of a known part {list(PARTS)}")
    missing = [p for p in PARTS if p not in modes]
    if missing:
        raise ConfigError(f"freeze.parts: no mode for {missing}; every part of {list(PARTS)} needs one")
    embeddings = get("embeddings")
    if embeddings is None:
        # LoRA leaves the base weights, embeddings included, frozen.
        embeddings = "full" if modes["llm"] == "full" else "frozen"
    return FreezePlan(
        modes=modes, embeddings=embeddings, vit_last_n=get("vit_last_n"), frozen_mode=get("frozen_mode", "eval")
    )


def num_vision_layers(model: nn.Module, family: Family) -> int:
    """Layers in the vision tower (works on PEFT-wrapped models: counts layer indices in parameter names)."""
    indices = {family.vision_layer_index(n) for n, _ in model.named_parameters()}
    indices.discard(None)
    return 1 + max(indices) if indices else 0


def trainable_vision_layers(plan: FreezePlan, n_layers: int) -> set[int]:
    """Vision layers whose weights train (fully or through LoRA)."""
    if plan.modes["vision"] in ("full", "lora"):
        return set(range(n_layers))
    if plan.vit_last_n:
        if plan.vit_last_n > n_layers:
            raise ConfigError(
                f"freeze.vit_last_n: {plan.vit_last_n} is more than the vision tower's {n_layers} layers; "
                f"set it to at most {n_layers}"
            )
        return set(range(n_layers - plan.vit_last_n, n_layers))
    return set()


def fully_trained(family: Family, plan: FreezePlan, base_name: str, last_layers: set[int]) -> bool:
    """Whether a base-model parameter (or module) trains as a whole (LoRA adapters are counted elsewhere)."""
    part = family.part_of(base_name)
    if family.is_embeddings(base_name):
        return plan.embeddings == "full"
    if plan.modes[part] == "full":
        return True
    if part == "vision" and plan.modes[part] == "frozen":
        return family.vision_layer_index(base_name) in last_layers
    return False


def ties_lm_head(model: nn.Module) -> bool:
    """Whether the checkpoint ties lm_head to the input embeddings (one tensor)."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def check_tied_embeddings(model: nn.Module, plan: FreezePlan) -> None:
    """lm_head tied to the input embeddings is one tensor: it cannot be frozen and trained at once."""
    if ties_lm_head(model) and plan.modes["lm_head"] in ("frozen", "full") and plan.modes["lm_head"] != plan.embeddings:
        raise ConfigError(
            f"freeze.parts.lm_head={plan.modes['lm_head']} but the input embeddings are {plan.embeddings} "
            "(freeze.embeddings), and this checkpoint ties lm_head to them (one tensor); "
            "set freeze.embeddings to the same mode as freeze.parts.lm_head"
        )


def set_requires_grad(model: nn.Module, family: Family, plan: FreezePlan) -> None:
    """Set `requires_grad` on every parameter: LoRA adapters train, PEFT's frozen originals never do,
    everything else follows the plan."""
    last_layers = trainable_vision_layers(plan, num_vision_layers(model, family))
    for name, param in model.named_parameters():
        if family.is_lora_param(name):
            param.requires_grad = True
        elif family.is_peft_original(name):
            param.requires_grad = False
        else:
            param.requires_grad = fully_trained(family, plan, family.base_name(name), last_layers)


def apply_freeze(model: nn.Module, family: Family, freeze_cfg: FreezeConfig) -> FreezePlan:
    """Apply a freeze strategy without LoRA (full / frozen parts, vit_last_n, embeddings). Returns the plan."""
    plan = freeze_plan(freeze_cfg)
    check_tied_embeddings(model, plan)
    set_requires_grad(model, family, plan)
    return plan


def frozen_module_names(model: nn.Module, family: Family, plan: FreezePlan) -> list[str]:
    """Base-model modules that are entirely frozen: the `frozen` parts, or under vit_last_n the vision tower
    minus its last N layers. Parts in `lora` mode are not listed: their LoRA dropout is meant to be active."""
    names: list[str] = []
    n_layers = num_vision_layers(model, family)
    last_layers = trainable_vision_layers(plan, n_layers)
    for part in PARTS:
        if plan.modes[part] != "frozen":
            continue
        if part == "vision" and last_layers:
            vision_root = family.parts["vision"][0]
            for child, _ in model.get_submodule(vision_root).named_children():
                path = f"{vision_root}.{child}"
                if not family.vision_layers.startswith(path + ".") and path != family.vision_layers:
                    names.append(path)
            names += [f"{family.vision_layers}.{i}" for i in range(n_layers) if i not in last_layers]
        else:
            names += list(family.parts[part])
    if plan.embeddings == "frozen" and plan.modes["llm"] != "frozen":
        names += list(family.embeddings)
    return names


def _eval_pre_hook(module: nn.Module, args: Any) -> None:
    """Switch a frozen module (and everything under it) to eval mode right before it runs.

    Layer containers with activation checkpointing keep their mode: their `training` flag only decides whether
    they are checkpointed, which still matters when gradients flow through a frozen layer (e.g. a frozen LLM
    under freeze=llm). Dropout, attention dropout and drop-path all live below them and are switched off.
    """
    if not module.training:
        return
    from transformers.modeling_layers import GradientCheckpointingLayer

    for sub in module.modules():
        if not (isinstance(sub, GradientCheckpointingLayer) and sub.gradient_checkpointing):
            sub.training = False


def keep_frozen_in_eval(model: nn.Module, module_names: list[str]) -> list[Any]:
    """Keep the named modules in eval mode at every forward. A forward pre-hook, not a Trainer callback: the
    Trainer calls `model.train()` inside every training step, after any callback could run. Returns handles."""
    return [model.get_submodule(n).register_forward_pre_hook(_eval_pre_hook) for n in module_names]
