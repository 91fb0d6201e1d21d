"""A preset's `arch` block: which dims random init needs, and why it refuses a preset that leaves them unsourced.

A preset carries only the dims that are sourced (conf/model/*.yaml, each with its provenance tag); an unsourced
dim is null, and random init on such a preset is refused with the list of missing keys rather than guessed.
"""

from __future__ import annotations

from internvl_exp.config.schema import ModelConfig
from internvl_exp.errors import ConfigError

VISION_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "norm_type", "use_qk_norm", "attention_bias",
)
_DENSE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
          "vocab_size", "tie_word_embeddings")
# Per text model_type: the fields that shape its parameters. head_dim is explicit (not hidden/heads) in
# Qwen3 and GPT-OSS; `intermediate_size` is the expert width in GPT-OSS, the dense-MLP width in Qwen3-MoE.
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "llama": _DENSE,
    "qwen2": _DENSE,
    "phi3": _DENSE,
    "qwen3": (*_DENSE, "head_dim"),
    "qwen3_moe": (*_DENSE, "head_dim", "num_experts", "num_experts_per_tok", "moe_intermediate_size"),
    "gpt_oss": (*_DENSE, "head_dim", "num_experts", "num_experts_per_tok"),
}
def missing_arch_fields(model_cfg: ModelConfig) -> list[str]:
    """The `model.arch.*` keys random init needs but the preset leaves null (unsourced)."""
    vision, text = model_cfg.arch.vision, model_cfg.arch.text
    missing = [f"model.arch.vision.{f}" for f in VISION_FIELDS if vision[f] is None]
    if text.model_type is None:
        return missing + ["model.arch.text.model_type"] + [f"model.arch.text.{f}" for f in _DENSE if text[f] is None]
    if text.model_type not in TEXT_FIELDS:
        raise ConfigError(
            f"model.arch.text.model_type: {text.model_type!r} is not one of {sorted(TEXT_FIELDS)}"
        )
    return missing + [f"model.arch.text.{f}" for f in TEXT_FIELDS[text.model_type] if text[f] is None]


def random_init_refusal(model_cfg: ModelConfig) -> str | None:
    """Why random init cannot build this preset (None when it can)."""
    missing = missing_arch_fields(model_cfg)
    if not missing:
        return None
    return (
        f"model.random_init: preset {model_cfg.name!r} has no sourced value for {', '.join(missing)}; random init "
        "would have to guess them. Set them (from the checkpoint's config.json, e.g. "
        f"{missing[0]}=...) or pick a preset whose dims are sourced (docs/models.md)"
    )
