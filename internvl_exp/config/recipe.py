"""The model preset's recipe: the defaults a run takes for the keys it leaves at null, and which stay unfilled.

Each real preset's `recipe:` block holds InternVL's official fine-tuning values for that model (conf/model/*.yaml
cite the script and line). Light: omegaconf only.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

# Keys a model recipe supplies when the run leaves them at null: config key -> model.recipe field.
RECIPE_KEYS = {
    "optimizer.lr": "lr",
    "optimizer.weight_decay": "weight_decay",
    "optimizer.warmup_ratio": "warmup_ratio",
    "optimizer.scheduler": "scheduler",
    "data.max_seq_length": "max_seq_length",
    "trainer.bf16": "bf16",
    "trainer.activation_checkpointing": "activation_checkpointing",
}


def apply_recipe(cfg: DictConfig) -> dict[str, str]:
    """Fill the null keys of RECIPE_KEYS from model.recipe; returns {key: "recipe <name>"} for those filled."""
    recipe = cfg.model.recipe
    origins: dict[str, str] = {}
    for key, field in RECIPE_KEYS.items():
        value = recipe[field]
        if OmegaConf.select(cfg, key) is None and value is not None:
            OmegaConf.update(cfg, key, value, merge=False)
            origins[key] = f"recipe {recipe.name or cfg.model.name}"
    return origins


def recipe_gaps(cfg: DictConfig) -> list[str]:
    """The recipe keys still null after resolution (the preset has no sourced value and the run set none)."""
    return [f"{key}: not set, and model={cfg.model.name} has no sourced recipe value for it (model.recipe."
            f"{field}); set {key}=VALUE" for key, field in RECIPE_KEYS.items() if OmegaConf.select(cfg, key) is None]
