"""Original `InternVLChatConfig` (config.json) -> native `InternVLConfig` fields.

Every field that changes the forward pass is mapped or refused; settings with no native counterpart that do not
change the weights' meaning (flash-attn switches, LoRA flags at 0, drop_path for training) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from internvl_exp.config.geometry import tokens_per_tile
from internvl_exp.models.convert.llm_keys import Family, TextDims, family_of, supported_architectures
from internvl_exp.models.convert.source import SAFETENSORS_DTYPES, ConversionError, SourceCheckpoint

# transformers-4 PretrainedConfig attributes serialised into every sub-config: generation defaults, bookkeeping,
# remote-code hooks. None of them describes the architecture; the native config gets its own defaults.
_V4_CONFIG_NOISE = {
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "torch_dtype", "use_bfloat16",
    "tf_legacy_loss", "pruned_heads", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder",
    "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k",
    "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "architectures",
    "finetuning_task", "id2label", "label2id", "tokenizer_class", "prefix", "sep_token_id",
    "decoder_start_token_id", "task_specific_params", "problem_type", "_name_or_path", "_commit_hash",
    "_attn_implementation_internal", "_attn_implementation_autoset", "transformers_version", "attn_implementation",
    "auto_map", "use_flash_attn", "model_type", "tie_word_embeddings", "dtype", "use_cache", "_flash_attn_2_enabled",
}
_OLD_ROPE_TYPES = {"su": "longrope"}  # Phi-3 128k configs written before the rename


@dataclass(frozen=True)
class MappedConfig:
    native: dict[str, Any]  # kwargs for transformers.InternVLConfig
    family: Family
    text_dims: TextDims
    tie_word_embeddings: bool
    image_size: int
    patch_size: int
    image_seq_length: int
    min_dynamic_patch: int
    max_dynamic_patch: int
    template: str | None



# InternViT's config fields in both layouts: (native name, original name, default when a config lacks it). The
# converter reads it one way and the export the other, so the two directions cannot drift apart. ls1/ls2 are
# initialised to initializer_factor in the original; the values themselves come from the checkpoint.
VISION_FIELDS = (
    ("hidden_size", "hidden_size", None),
    ("num_hidden_layers", "num_hidden_layers", None),
    ("num_attention_heads", "num_attention_heads", None),
    ("intermediate_size", "intermediate_size", None),
    ("hidden_act", "hidden_act", "gelu"),
    ("norm_type", "norm_type", "rms_norm"),
    ("layer_norm_eps", "layer_norm_eps", 1e-6),
    ("use_qk_norm", "qk_normalization", False),
    ("attention_bias", "qkv_bias", False),
    ("attention_dropout", "attention_dropout", 0.0),
    ("projection_dropout", "dropout", 0.0),
    ("initializer_range", "initializer_range", 0.02),
    ("layer_scale_init_value", "initializer_factor", 0.1),
    ("num_channels", "num_channels", 3),
)


def vision_fields(vis: dict[str, Any], to_native: bool) -> dict[str, Any]:
    """The VISION_FIELDS of a vision config, renamed into the other layout (required ones must be there)."""
    out = {}
    for native, original, default in VISION_FIELDS:
        src, dst = (original, native) if to_native else (native, original)
        value = vis[src] if default is None else vis.get(src, default)
        out[dst] = bool(value) if isinstance(default, bool) else value
    return out

def _where(src: SourceCheckpoint) -> str:
    return str(src.path / "config.json")


def _text_config(src: SourceCheckpoint, family: Family) -> dict[str, Any]:
    llm = src.config["llm_config"]
    text = {k: v for k, v in llm.items() if k not in _V4_CONFIG_NOISE}
    if family.name == "internlm2":
        # InternLM2's `bias` covers wqkv and wo, which become Llama's q/k/v/o projections; its MLP has no bias.
        text["attention_bias"] = bool(text.pop("bias", False))
        text["mlp_bias"] = False
    scaling = text.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("type") in _OLD_ROPE_TYPES:
        text["rope_scaling"] = {**scaling, "type": _OLD_ROPE_TYPES[scaling["type"]]}
    text["model_type"] = family.native_model_type
    return text


def _text_dims(text: dict[str, Any], where: str) -> TextDims:
    try:
        heads = int(text["num_attention_heads"])
        kv = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or text["hidden_size"] // heads)
    except KeyError as e:
        raise ConversionError(f"{where}: llm_config has no {e.args[0]!r}; the config is incomplete") from None
    if heads % kv:
        raise ConversionError(f"{where}: llm_config num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    return TextDims(heads, kv, head_dim)


def _tied(src: SourceCheckpoint, family: Family) -> bool:
    """Whether lm_head shares the input embeddings, from the checkpoint itself: a missing head tensor means tied;
    otherwise the LLM's own flag (the original model ties through its language model's config). Never the
    native InternVLConfig default (True), which would silently tie an untied model."""
    head = "language_model.output.weight" if family.name == "internlm2" else "language_model.lm_head.weight"
    if head not in src.tensors:
        return True
    return bool(src.config["llm_config"].get("tie_word_embeddings", False))


def _check_supported(src: SourceCheckpoint) -> None:
    cfg, where = src.config, _where(src)
    if cfg.get("ps_version", "v2") != "v2":
        raise ConversionError(f"{where}: ps_version {cfg['ps_version']!r} is not supported; the native pixel shuffle is v2")
    if cfg.get("use_backbone_lora") or cfg.get("use_llm_lora"):
        raise ConversionError(f"{where}: use_backbone_lora/use_llm_lora is set; merge the LoRA weights into the base first")
    if cfg.get("pad2square"):
        raise ConversionError(f"{where}: pad2square=true has no native image-processor equivalent; not supported")
    if not cfg.get("use_thumbnail", True) and cfg.get("dynamic_image_size", True):
        raise ConversionError(f"{where}: use_thumbnail=false is not supported (the native image processor always adds it)")
    if cfg["vision_config"].get("use_moe"):
        raise ConversionError(f"{where}: vision_config.use_moe=true (an MoE InternViT) has no native class; not supported")


def source_dtype(src: SourceCheckpoint) -> str:
    """The checkpoint's float dtype (the one most bytes are stored in), as a torch dtype name."""
    sizes: dict[str, int] = {}
    for info in src.tensors.values():
        n = 1
        for d in info.shape:
            n *= d
        sizes[info.dtype] = sizes.get(info.dtype, 0) + n
    return SAFETENSORS_DTYPES.get(max(sizes, key=sizes.get), "float32") if sizes else "float32"


def map_config(src: SourceCheckpoint, image_token_id: int) -> MappedConfig:
    """The native config for `src`; `image_token_id` is the tokenizer's <IMG_CONTEXT> id."""
    cfg, where = src.config, _where(src)
    _check_supported(src)
    llm, vis = cfg["llm_config"], cfg["vision_config"]
    family = family_of(llm)
    if family is None:
        arch = (llm.get("architectures") or [llm.get("model_type")])[0]
        raise ConversionError(
            f"{where}: llm_config architecture {arch!r} is not supported by the converter "
            f"(supported: {', '.join(supported_architectures())})"
        )
    image_size = int(cfg.get("force_image_size") or vis["image_size"])
    patch = int(vis["patch_size"])
    ratio = float(cfg.get("downsample_ratio", 0.5))
    text = _text_config(src, family)
    dims = _text_dims(text, where)
    tie = _tied(src, family)
    text["tie_word_embeddings"] = tie
    dtype = source_dtype(src)
    text["dtype"] = dtype
    vision = {
        **vision_fields(vis, to_native=True),
        "hidden_dropout_prob": vis.get("dropout", 0.0),
        "image_size": [image_size, image_size],
        "patch_size": [patch, patch],
        "dtype": dtype,
    }
    seq = tokens_per_tile(image_size, patch, ratio)
    native = {
        "vision_config": vision,
        "text_config": text,
        "image_token_id": image_token_id,
        "image_seq_length": seq,
        "downsample_ratio": ratio,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": int(cfg.get("select_layer", -1)),
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": tie,
        "dtype": dtype,
    }
    dynamic = cfg.get("dynamic_image_size", True)
    return MappedConfig(
        native=native,
        family=family,
        text_dims=dims,
        tie_word_embeddings=tie,
        image_size=image_size,
        patch_size=patch,
        image_seq_length=seq,
        min_dynamic_patch=int(cfg.get("min_dynamic_patch", 1)) if dynamic else 1,
        max_dynamic_patch=int(cfg.get("max_dynamic_patch", 12)) if dynamic else 1,
        template=cfg.get("template"),
    )
