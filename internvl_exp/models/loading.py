"""Building the tokenizer, processor and model for a `model` config.

One model class at run time: transformers' native `InternVLForConditionalGeneration`. No remote code.
"""

from __future__ import annotations

from typing import Any

import torch

from internvl_exp.data.images import normalization
from internvl_exp.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(model_cfg: Any):
    if model_cfg.source == "tiny":
        from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

        return load_tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint_path(model_cfg))


def checkpoint_path(model_cfg: Any) -> str:
    if not model_cfg.path:
        raise ConfigError(f"model.path is not set for model {model_cfg.name!r} (source=pretrained needs a checkpoint path)")
    return str(model_cfg.path)


def tokens_per_tile(image_size: int, patch_size: int, downsample_ratio: float) -> int:
    return int((image_size // patch_size) ** 2 * downsample_ratio**2)


def tiny_config(model_cfg: Any, tokenizer: Any):
    from transformers import InternVLConfig

    t = model_cfg.tiny
    return InternVLConfig(
        vision_config={
            "hidden_size": t.vision_hidden_size,
            "num_hidden_layers": t.vision_layers,
            "num_attention_heads": t.vision_heads,
            "intermediate_size": t.vision_intermediate_size,
            "image_size": [model_cfg.image_size, model_cfg.image_size],
            "patch_size": [t.patch_size, t.patch_size],
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": t.text_hidden_size,
            "num_hidden_layers": t.text_layers,
            "num_attention_heads": t.text_heads,
            "num_key_value_heads": t.text_kv_heads,
            "intermediate_size": t.text_intermediate_size,
            "max_position_embeddings": 4096,
            "use_cache": False,
            "tie_word_embeddings": False,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        downsample_ratio=model_cfg.downsample_ratio,
        image_seq_length=tokens_per_tile(model_cfg.image_size, t.patch_size, model_cfg.downsample_ratio),
        tie_word_embeddings=False,
    )


def load_model(model_cfg: Any, tokenizer: Any):
    from transformers import AutoModelForImageTextToText

    dtype = DTYPES[model_cfg.dtype]
    if model_cfg.source == "tiny":
        # from_config (not the bare constructor) so ZeRO-3 partitions it at construction.
        model = AutoModelForImageTextToText.from_config(
            tiny_config(model_cfg, tokenizer), dtype=dtype, attn_implementation=model_cfg.attn_implementation
        )
    elif model_cfg.source == "pretrained":
        model = AutoModelForImageTextToText.from_pretrained(
            checkpoint_path(model_cfg), dtype=dtype, attn_implementation=model_cfg.attn_implementation
        )
    else:
        raise ConfigError(f"model.source must be 'tiny' or 'pretrained', got {model_cfg.source!r}")
    # Training never needs the KV cache, and a live cache silently disables packed-sequence masks.
    model.config.use_cache = False
    model.config.get_text_config().use_cache = False
    return model


def vision_tile_geometry(vision_config: Any) -> tuple[int, int]:
    """(tile size, patch size) in pixels of a vision config (each stored as an int or a square [h, w] pair)."""
    size, patch = vision_config.image_size, vision_config.patch_size
    return (size[0] if isinstance(size, (list, tuple)) else size, patch[0] if isinstance(patch, (list, tuple)) else patch)


def config_tokens_per_tile(config: Any) -> int:
    """Image tokens per tile of an `InternVLConfig`."""
    size, patch = vision_tile_geometry(config.vision_config)
    return tokens_per_tile(size, patch, config.downsample_ratio)


def build_processor(model_cfg: Any, tokenizer: Any, num_tokens_per_tile: int):
    """An InternVLProcessor (GOT-OCR2 image processor + tokenizer) saved next to every checkpoint."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    mean, std = normalization(model_cfg.normalize_type)
    image_processor = GotOcr2ImageProcessor(
        size={"height": model_cfg.image_size, "width": model_cfg.image_size},
        crop_to_patches=True,
        min_patches=model_cfg.min_dynamic_patch,
        max_patches=model_cfg.max_dynamic_patch,
        image_mean=list(mean),
        image_std=list(std),
    )
    video_processor = InternVLVideoProcessor(
        size={"height": model_cfg.image_size, "width": model_cfg.image_size}, image_mean=list(mean), image_std=list(std)
    )
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=num_tokens_per_tile,
    )
