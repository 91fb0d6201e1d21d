"""LoRA through PEFT on the parts whose mode is `lora` (vision and/or llm), in terms of parts.

Targets are one regex that PEFT `re.fullmatch`es against base-model module names, anchored at each tower's
layer stack: the vision tower's `attention.q_proj/k_proj/v_proj` share their leaf names with the LLM's
`self_attn.q_proj/...`, and a plain name list would hit both. Parts in `full` mode (and the last N ViT layers
under vit_last_n, and full embeddings) go to `modules_to_save`: PEFT trains a copy and saves it with the
adapter, so the adapter alone plus the base model rebuild the trained model (tools/merge_lora.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import nn

from internvl_exp.config.choices import PARTS
from internvl_exp.config.schema import LoraConfig as LoraSettings
from internvl_exp.errors import ConfigError
from internvl_exp.models.registry import Family
from internvl_exp.outputs import write_json_atomic
from internvl_exp.train.tuning.freeze import FreezePlan, num_vision_layers, ties_lm_head, trainable_vision_layers

log = logging.getLogger(__name__)



def lora_targets(family: Family, plan: FreezePlan, lora_cfg: LoraSettings) -> str:
    llm = plan.modes["llm"] == "lora"
    vision = plan.modes["vision"] == "lora"
    llm_targets = tuple(lora_cfg.llm_targets or family.llm_lora_targets) if llm else None
    vision_targets = tuple(lora_cfg.vision_targets or family.vision_lora_targets) if vision else None
    return family.lora_target_regex(llm_targets, vision_targets)


def modules_to_save(model: nn.Module, family: Family, plan: FreezePlan) -> list[str]:
    """Full base-model paths of the modules that train fully next to LoRA."""
    names = [prefix for part in PARTS if plan.modes[part] == "full" for prefix in family.parts[part]]
    if plan.modes["vision"] == "frozen":
        last = trainable_vision_layers(plan, num_vision_layers(model, family))
        names += [f"{family.vision_layers}.{i}" for i in sorted(last)]
    if plan.embeddings == "full" and plan.modes["llm"] != "full":
        names += list(family.embeddings)
    return names


def apply_lora(model: nn.Module, family: Family, plan: FreezePlan, lora_cfg: LoraSettings) -> nn.Module:
    """Wrap the model in a PeftModel with LoRA on the `lora` parts; returns the wrapped model."""
    from peft import LoraConfig, get_peft_model

    if ties_lm_head(model) and "full" in (plan.modes["lm_head"], plan.embeddings):
        raise ConfigError(
            "freeze: this checkpoint ties lm_head to the input embeddings, and training them fully next to LoRA "
            "is not supported; set freeze.parts.lm_head=frozen and freeze.embeddings=frozen"
        )
    config = LoraConfig(
        r=int(lora_cfg.r),
        lora_alpha=float(lora_cfg.alpha),
        lora_dropout=float(lora_cfg.dropout),
        target_modules=lora_targets(family, plan, lora_cfg),
        modules_to_save=modules_to_save(model, family, plan) or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_base_model(model: nn.Module, directory: Path) -> None:
    """Save the untouched base model (before LoRA) so the adapter can be merged offline later. Needed when the
    base cannot be reloaded from anywhere else (the tiny model's random init)."""
    if any(hasattr(p, "ds_numel") for p in model.parameters()):
        # ZeRO-3 partitions weights at construction: this process holds only a shard, nothing to save.
        log.warning("not saving the LoRA base model to %s: its weights are partitioned by ZeRO-3", directory)
        return
    model.save_pretrained(str(directory))


def record_base_model(final_dir: Path, base: Path | str | None) -> None:
    """Write the base model's absolute local path into final_dir/adapter_config.json, so that
    `from_pretrained(final_dir)` (transformers' adapter loading and peft) finds it on this machine; PEFT writes
    the base's `name_or_path`, which is empty for a random init and a Hub id (network) otherwise."""
    config_file = final_dir / "adapter_config.json"
    if base is None or not config_file.is_file():
        return

    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(Path(base).resolve())
    write_json_atomic(config_file, config)
