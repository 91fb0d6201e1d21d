"""Building the tokenizer, processor and model for a `model` config.

One model class at run time: transformers' native `InternVLForConditionalGeneration`. No remote code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from internvl_exp.config.geometry import tokens_per_tile
from internvl_exp.config.schema import ModelConfig
from internvl_exp.errors import ConfigError, UserError
from internvl_exp.models.arch import internvl_config_dict
from internvl_exp.models.convert import ensure_converted
from internvl_exp.models.processor import from_pretrained_dir, make_processor, template_for
from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

if TYPE_CHECKING:
    from internvl_exp.models.resolve import Weights

# torch is imported inside the functions: the geometry helpers here serve light config-time code too.
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # model.dtype=auto is resolved by config/precision.py


class CheckpointMismatchError(UserError):
    """A loaded checkpoint (tokenizer, processor, model config) disagrees with the model config."""


def native_checkpoint(weights: Weights | None, cache_dir: Path, random_init: bool = False) -> Path | None:
    """The native-layout directory to load `weights` from; an original-layout (remote-code) checkpoint is
    converted once and cached under `cache_dir` (keyed by its content). Random init only wants a tokenizer, not
    worth converting a whole checkpoint for: it gets None (the tiny tokenizer) for an original-layout copy."""
    if weights is None:
        return None
    if weights.layout == "native":
        return weights.path
    if random_init:
        return None

    return Path(ensure_converted(weights.path, cache_dir))


def load_tokenizer(model_cfg: ModelConfig, checkpoint: Path | None = None):
    """The checkpoint's own tokenizer; without a checkpoint (random init) the tiny tokenizer."""
    if checkpoint is None:
        if not model_cfg.random_init:
            raise ConfigError(_no_weights(model_cfg))

        return load_tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(checkpoint))


def _no_weights(model_cfg: ModelConfig) -> str:
    return (f"model={model_cfg.name} needs its weights: resolve them first "
            "(internvl_exp.models.resolve.resolve_weights) or set model.random_init=true")


def image_token_id(model_cfg: ModelConfig, tokenizer: Any) -> int:
    """The tokenizer's id of the image-context token (model.image_context_token), which must be one token."""
    token = model_cfg.image_context_token
    ids = tokenizer.convert_tokens_to_ids([token])
    if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
        raise CheckpointMismatchError(
            f"model.image_context_token: the tokenizer has no token {token!r}; set model.image_context_token"
        )
    return int(ids[0])


def random_config(model_cfg: ModelConfig, tokenizer: Any):
    """The `InternVLConfig` of the preset's `arch` (random init), image token id from the tokenizer."""
    from transformers import InternVLConfig

    if len(tokenizer) > (model_cfg.arch.text.vocab_size or 0):
        raise ConfigError(
            f"model.arch.text.vocab_size: {model_cfg.arch.text.vocab_size} is smaller than the tokenizer's "
            f"{len(tokenizer)} tokens; raise it"
        )
    return InternVLConfig(**internvl_config_dict(
        model_cfg, image_token_id(model_cfg, tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id
    ))


def build_model_on_meta(model_cfg: ModelConfig):
    """The preset's architecture on the meta device: shapes and parameter counts, no memory (planning).
    Refused, naming the missing `model.arch` keys, for a preset whose dims are not all sourced."""
    import torch
    from transformers import AutoModelForImageTextToText, InternVLConfig

    placeholder = model_cfg.image_token_id if model_cfg.image_token_id is not None else 0
    config = InternVLConfig(**internvl_config_dict(model_cfg, placeholder, None, None))
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config, dtype=_dtype(model_cfg.dtype))


def _dtype(name: str):
    import torch

    if name == "auto":  # outside a run (planning, tools): full precision; a run resolves it (config/precision.py)
        name = "float32"
    if name not in DTYPE_NAMES:
        raise ConfigError(f"model.dtype: {name!r} is not one of {list(DTYPE_NAMES)}")
    return getattr(torch, name)


def load_model(model_cfg: ModelConfig, tokenizer: Any, checkpoint: Path | None = None):
    """Random init from `arch` (model.random_init=true) or the native checkpoint's weights (never remote code).
    A preset with weights never falls back to random: without a checkpoint and random_init=false it refuses."""
    from transformers import AutoModelForImageTextToText

    dtype = _dtype(model_cfg.dtype)
    if model_cfg.random_init:
        # from_config (not the bare constructor) so ZeRO-3 partitions it at construction.
        model = AutoModelForImageTextToText.from_config(
            random_config(model_cfg, tokenizer), dtype=dtype, attn_implementation=model_cfg.attn_implementation
        )
    elif checkpoint is None:
        raise ConfigError(_no_weights(model_cfg))
    else:
        model = AutoModelForImageTextToText.from_pretrained(
            str(checkpoint), dtype=dtype, attn_implementation=model_cfg.attn_implementation
        )
        check_loaded(model_cfg, model.config, tokenizer, checkpoint)
    # Training never needs the KV cache, and a live cache silently disables packed-sequence masks.
    model.config.use_cache = False
    model.config.get_text_config().use_cache = False
    return model


def check_loaded(model_cfg: ModelConfig, config: Any, tokenizer: Any, checkpoint: Path) -> None:
    """Re-check the preset against the loaded checkpoint: image token id (config, tokenizer, preset), tile size
    and tokens per tile."""
    problems = []
    ids = {"the preset (model.image_token_id)": model_cfg.image_token_id,
           f"the tokenizer ({model_cfg.image_context_token})": image_token_id(model_cfg, tokenizer)}
    for who, value in ids.items():
        if value is not None and value != config.image_token_id:
            problems.append(f"image_token_id {config.image_token_id}, but {who} says {value}")
    size, patch = vision_tile_geometry(config.vision_config)
    if size != model_cfg.image_size:
        problems.append(f"{size}-px tiles, but model.image_size={model_cfg.image_size}")
    expected = tokens_per_tile(model_cfg.image_size, model_cfg.patch_size, model_cfg.downsample_ratio)
    if config_tokens_per_tile(config) != expected:
        problems.append(f"{config_tokens_per_tile(config)} image tokens per tile, but the model config gives {expected} "
                        "(model.patch_size / model.downsample_ratio)")
    if problems:
        raise CheckpointMismatchError(f"{checkpoint}/config.json: the checkpoint has " + "; ".join(problems))


def vision_tile_geometry(vision_config: Any) -> tuple[int, int]:
    """(tile size, patch size) in pixels of a vision config (each stored as an int or a square [h, w] pair)."""
    size, patch = vision_config.image_size, vision_config.patch_size
    return (size[0] if isinstance(size, (list, tuple)) else size, patch[0] if isinstance(patch, (list, tuple)) else patch)


def config_tokens_per_tile(config: Any) -> int:
    """Image tokens per tile of an `InternVLConfig`."""
    size, patch = vision_tile_geometry(config.vision_config)
    return tokens_per_tile(size, patch, config.downsample_ratio)


def build_processor(model_cfg: ModelConfig, tokenizer: Any, num_tokens_per_tile: int, system_message: str | None = None,
                    resize_backend: str = "pil"):
    """An InternVLProcessor built from the model config (tiling, normalisation, chat template of model.template),
    its image processor on `resize_backend`'s kernel (data.resize_backend: the training pixels)."""
    return make_processor(
        tokenizer,
        image_size=model_cfg.image_size,
        min_patches=model_cfg.min_dynamic_patch,
        max_patches=model_cfg.max_dynamic_patch,
        image_seq_length=num_tokens_per_tile,
        template=model_cfg.template,
        normalize_type=model_cfg.normalize_type,
        system_message=system_message,
        resize_backend=resize_backend,
    )


def load_processor(model_cfg: ModelConfig, tokenizer: Any, num_tokens_per_tile: int, checkpoint: Path | None = None,
                   system_message: str | None = None, resize_backend: str = "pil"):
    """The checkpoint's own processor when it ships one (native repos do), else one built from the model config.
    Its tile counts follow the run's model.min/max_dynamic_patch, its image processor the run's resize kernel
    (`resize_backend`, data.resize_backend) and its chat template renders the run's model.template (and
    data.system_message), so final/ preprocesses (pixels included) and prompts as training did."""
    if checkpoint is not None and any((checkpoint / f).is_file() for f in ("processor_config.json", "preprocessor_config.json")):
        processor = from_pretrained_dir(checkpoint, resize_backend)
        if getattr(processor, "image_seq_length", num_tokens_per_tile) != num_tokens_per_tile:
            raise CheckpointMismatchError(
                f"{checkpoint}: its processor puts {processor.image_seq_length} tokens per tile, the model "
                f"{num_tokens_per_tile}; the checkpoint's processor config does not match its config.json"
            )
        image_processor = processor.image_processor
        image_processor.min_patches = model_cfg.min_dynamic_patch
        image_processor.max_patches = model_cfg.max_dynamic_patch
        processor.tokenizer = tokenizer

        processor.chat_template = template_for(model_cfg.template, system_message) or processor.chat_template
        return processor
    return build_processor(model_cfg, tokenizer, num_tokens_per_tile, system_message, resize_backend)
