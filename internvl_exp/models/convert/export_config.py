"""Native `InternVLConfig` (config.json) -> the original `InternVLChatConfig` dict, the inverse of config_map.

What OpenGVLab's remote code reads: `vision_config` (InternVisionConfig), `llm_config` (the LLM's own config,
chosen by `llm_config.architectures[0]`), `select_layer`, `force_image_size`, `downsample_ratio`, `ps_version`,
`template`, `dynamic_image_size`, `use_thumbnail`, `min_dynamic_patch`, `max_dynamic_patch`, `use_backbone_lora`,
`use_llm_lora`, `pad2square`. transformers 5 keeps rope settings in `rope_parameters`; the original code (written
against transformers 4) reads `rope_theta` and `rope_scaling`, so they are written back that way.
When the run started from an original checkpoint, that checkpoint's config.json is the base and only the values
the trained model holds differently are updated, so an unchanged architecture gives back the source file's fields.
"""

from __future__ import annotations

import copy
from typing import Any

from internvl_exp.models.convert.config_map import vision_fields
from internvl_exp.models.convert.llm_keys import Family

ORIGINAL_AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}
# InternLM2's llm_config names its own remote code (the InternVL releases ship these files beside the model's).
INTERNLM2_AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}
# rope_scaling key spelling per family: InternLM2's remote code and transformers-4.37 Llama/Phi3 validate
# `type` (InternLM2 and Llama want exactly {type, factor}); Qwen3 / Qwen3-MoE / GPT-OSS came with `rope_type`.
_ROPE_KEY = {"internlm2": "type", "llama": "type", "phi3": "type", "qwen2": "type",
             "qwen3": "rope_type", "qwen3_moe": "rope_type", "gpt_oss": "rope_type"}
# Native-only text fields with no meaning to the original LLM class (the native InternLM2 -> Llama mapping).
_NATIVE_ONLY = {"dtype", "rope_parameters", "mlp_bias", "attention_bias", "model_type", "architectures"}
# Runtime switches and bookkeeping a source keeps as it wrote them (the remote code sets attention itself;
# training turns use_cache off and fills eos/pad from the tokenizer, which changes nothing the weights mean).
_KEEP_SOURCE = {"torch_dtype", "use_flash_attn", "drop_path_rate", "attn_implementation", "auto_map",
                "transformers_version", "architectures", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id"}
# transformers 5 stores some fields under a new name (its config's attribute_map); the original LLM class
# (transformers 4) reads the old one. GPT-OSS was born with num_local_experts; Qwen3-MoE read num_experts.
_OLD_NAMES = {"qwen3_moe": {"num_local_experts": "num_experts"}}
TOP_LEVEL_READ = ("select_layer", "force_image_size", "downsample_ratio", "ps_version", "template",
                  "dynamic_image_size", "use_thumbnail", "min_dynamic_patch", "max_dynamic_patch",
                  "use_backbone_lora", "use_llm_lora", "pad2square")


def _rope_back(text: dict[str, Any], family: Family) -> dict[str, Any]:
    """rope_parameters -> rope_theta + rope_scaling (None for plain rope)."""
    params = dict(text.get("rope_parameters") or {})
    out: dict[str, Any] = {}
    if "rope_theta" in params:
        out["rope_theta"] = params.pop("rope_theta")
    # A top-level field in transformers 4 (Phi3); 1.0, the default, is left out as the sources leave it out.
    partial = params.pop("partial_rotary_factor", 1.0)
    if partial != 1.0:
        out["partial_rotary_factor"] = partial
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if kind == "default" and not params:
        out["rope_scaling"] = None
    else:
        out["rope_scaling"] = {_ROPE_KEY.get(family.name, "rope_type"): kind, **params}
    return out


def llm_config_back(text: dict[str, Any], family: Family, dtype: str) -> dict[str, Any]:
    llm = {k: v for k, v in text.items() if k not in _NATIVE_ONLY}
    llm.update(_rope_back(text, family))
    for new, old in _OLD_NAMES.get(family.name, {}).items():
        if new in llm:
            llm[old] = llm.pop(new)
    llm["architectures"] = [family.architectures[0]]
    llm["model_type"] = family.name
    llm["torch_dtype"] = dtype
    llm["use_cache"] = True  # a trained model's config has it off (training); generation wants it on
    if family.name == "internlm2":
        llm["bias"] = bool(text.get("attention_bias", False))
        llm.pop("head_dim", None)  # InternLM2 derives it from hidden_size / num_attention_heads
        llm["auto_map"] = dict(INTERNLM2_AUTO_MAP)
    elif "attention_bias" in text and family.name in ("llama", "gpt_oss"):
        llm["attention_bias"] = text["attention_bias"]
    if "mlp_bias" in text and family.name == "llama":
        llm["mlp_bias"] = text["mlp_bias"]
    return llm


def vision_config_back(vis: dict[str, Any], dtype: str) -> dict[str, Any]:
    image = vis["image_size"][0] if isinstance(vis["image_size"], (list, tuple)) else vis["image_size"]
    patch = vis["patch_size"][0] if isinstance(vis["patch_size"], (list, tuple)) else vis["patch_size"]
    return {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        **vision_fields(vis, to_native=False),
        "drop_path_rate": 0.0,
        "image_size": image,
        "patch_size": patch,
        "use_flash_attn": True,  # the remote code turns it off itself where flash-attn is not installed
        "torch_dtype": dtype,
    }


def original_config(native: dict[str, Any], family: Family, *, template: str | None, min_dynamic_patch: int,
                    max_dynamic_patch: int) -> dict[str, Any]:
    """The InternVLChatConfig dict for a native config dict (its `to_dict()` / config.json)."""
    dtype = str(native.get("dtype") or native["text_config"].get("dtype") or "bfloat16")
    llm = llm_config_back(native["text_config"], family, dtype)
    vision = vision_config_back(native["vision_config"], dtype)
    tie = bool(native.get("tie_word_embeddings", native["text_config"].get("tie_word_embeddings", False)))
    llm["tie_word_embeddings"] = tie
    dynamic = max_dynamic_patch > 1
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "auto_map": dict(ORIGINAL_AUTO_MAP),
        "vision_config": vision,
        "llm_config": llm,
        "select_layer": int(native.get("vision_feature_layer", -1)),
        "force_image_size": vision["image_size"],
        "downsample_ratio": float(native.get("downsample_ratio", 0.5)),
        "ps_version": "v2",
        "template": template,
        "dynamic_image_size": dynamic,
        # The native GOT-OCR2 tiling always appends the thumbnail when it tiles (config_map refuses the opposite).
        "use_thumbnail": True,
        "min_dynamic_patch": min_dynamic_patch,
        "max_dynamic_patch": max_dynamic_patch,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "pad2square": False,
        "hidden_size": llm["hidden_size"],
        "tie_word_embeddings": tie,
        "torch_dtype": dtype,
    }


def _same(a: Any, b: Any) -> bool:
    """Equal as the original code reads them: rope_scaling's `type` and `rope_type` spell the same field."""
    if isinstance(a, dict) and isinstance(b, dict):
        norm = lambda d: {("type" if k == "rope_type" else k): v for k, v in d.items()}  # noqa: E731
        return norm(a) == norm(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def overlay_on_source(built: dict[str, Any], source: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The source config with the built values written over the fields it has and they hold differently.
    Fields the source lacks are not added (they are defaults the original code has anyway); returns the
    updated config and the names of the fields that changed."""
    out = copy.deepcopy(source)
    changed = []
    for section in ("vision_config", "llm_config"):
        for key, value in built[section].items():
            if key == "sliding_window" and not out[section].get("use_sliding_window", True):
                continue  # unused with use_sliding_window false (transformers 5 writes None there)
            if key in out[section] and key not in _KEEP_SOURCE and not _same(out[section][key], value):
                out[section][key] = value
                changed.append(f"{section}.{key}")
    for key in TOP_LEVEL_READ:
        if key in built and key in out and not _same(out[key], built[key]):
            if key in ("min_dynamic_patch", "max_dynamic_patch") and not out.get("dynamic_image_size", True) \
                    and not built["dynamic_image_size"]:
                continue  # unused without dynamic tiling
            out[key] = built[key]
            changed.append(key)
    return out, changed
