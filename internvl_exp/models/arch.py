"""A preset's architecture for the planner and for random init: the InternVLConfig its `arch` block makes, and
the planner's copy with recorded assumptions filled in (which dims are required: config/arch_rules.py).
Light: no torch, no transformers (the config dict is turned into an `InternVLConfig` in models.loading).
"""

from __future__ import annotations

import copy
from typing import Any

from internvl_exp.config.arch_rules import TEXT_FIELDS, VISION_FIELDS, missing_arch_fields, random_init_refusal
from internvl_exp.config.geometry import tokens_per_tile
from internvl_exp.config.schema import ModelConfig
from internvl_exp.errors import ConfigError
from internvl_exp.models.assumed_arch import assumed_text_values

# transformers' names where they differ from the arch block's.
_HF_NAMES = {"gpt_oss": {"num_experts": "num_local_experts"}}



def planning_arch(model_cfg: ModelConfig) -> tuple[Any, list[str]]:
    """The preset for planning: a copy with each unsourced `model.arch.text` value that random init would refuse
    filled from models.assumed_arch, and one line per reason naming what was assumed (empty: nothing assumed,
    `model_cfg` itself is returned). A missing value with no recorded assumption stays a ConfigError."""
    if not missing_arch_fields(model_cfg):
        return model_cfg, []
    table = assumed_text_values(model_cfg.name)
    cfg = copy.deepcopy(model_cfg)
    used: dict[str, list[str]] = {}  # reason -> "field=value", in the order assumed
    for _ in range(2):  # model_type first: it decides which other fields are needed
        for key in missing_arch_fields(cfg):
            field_name = key.rsplit(".", 1)[1]
            if key.startswith("model.arch.text.") and field_name in table:
                value, why = table[field_name]
                cfg.arch.text[field_name] = value
                shown = str(value).lower() if isinstance(value, bool) else value  # as the YAML would say it
                used.setdefault(why, []).append(f"{field_name}={shown}")
    still = missing_arch_fields(cfg)
    if still:
        raise ConfigError(
            f"model.arch: preset {model_cfg.name!r} has no sourced value for {', '.join(still)}, and the planner "
            f"records no assumption for them: set them on the command line (from the checkpoint's config.json, "
            f"e.g. {still[0]}=...) to plan this model"
        )
    return cfg, [f"assumed model.arch.text.{', '.join(values)}: {why}" for why, values in used.items()]


def internvl_config_dict(model_cfg: ModelConfig, image_token_id: int, pad_token_id: int | None,
                         eos_token_id: int | None) -> dict[str, Any]:
    """Keyword arguments of transformers' `InternVLConfig` for the preset's architecture."""
    refusal = random_init_refusal(model_cfg)
    if refusal:
        raise ConfigError(refusal)
    vision, text = model_cfg.arch.vision, model_cfg.arch.text
    names = _HF_NAMES.get(text.model_type, {})
    text_config: dict[str, Any] = {"model_type": text.model_type}
    for f in TEXT_FIELDS[text.model_type]:
        text_config[names.get(f, f)] = text[f]
    text_config.update(use_cache=False, pad_token_id=pad_token_id, eos_token_id=eos_token_id)
    size, patch = model_cfg.image_size, model_cfg.patch_size
    return {
        "vision_config": {**{f: vision[f] for f in VISION_FIELDS}, "image_size": [size, size], "patch_size": [patch, patch]},
        "text_config": text_config,
        "image_token_id": image_token_id,
        "downsample_ratio": model_cfg.downsample_ratio,
        "image_seq_length": tokens_per_tile(size, patch, model_cfg.downsample_ratio),
        # The composite flag decides the tie (its default is True); take it from the arch, never the default.
        "tie_word_embeddings": text.tie_word_embeddings,
    }
