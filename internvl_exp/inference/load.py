"""Load anything chat/predict accept, offline: a run directory (its final/), a plain model directory (a full
fine-tune's final/, a native or original-layout checkpoint), a LoRA adapter (base + adapter, base found
locally), or a preset name resolved as a run resolves it (models/resolve.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internvl_exp.config.resolve import run_config
from internvl_exp.data.templates import TEMPLATES
from internvl_exp.errors import UserError
from internvl_exp.launch.precheck import compose_config
from internvl_exp.models.convert import ensure_converted
from internvl_exp.models.loading import load_model, load_processor, load_tokenizer, native_checkpoint
from internvl_exp.models.processor import from_pretrained_dir
from internvl_exp.models.resolve import resolve_weights
from internvl_exp.outputs import base_model_dir


class InferenceTargetError(UserError):
    """A run dir / model dir / preset that cannot be loaded for inference."""


@dataclass
class Loaded:
    model: Any
    processor: Any
    source: str  # what was loaded, for the banner
    template: str | None  # model.template when known (run config or the saved chat template)
    run_config: dict[str, Any]


def _template_of(processor: Any, config: dict[str, Any]) -> str | None:
    name = (config.get("model") or {}).get("template")
    if name:
        return name
    # models/chat_template.py opens every template with "{#- <name>: ..."
    text = getattr(processor, "chat_template", None) or ""
    head = text.split(":", 1)[0].removeprefix("{#-").strip()
    return head if head in TEMPLATES else None


def device_and_dtype(device: str | None, dtype: str | None) -> tuple[str, Any]:
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype:
        return dev, getattr(torch, dtype)
    return dev, "auto"  # the dtype the checkpoint was saved in


def _from_dir(model_dir: Path, adapter: Path | None, dtype: Any):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))

    processor = from_pretrained_dir(adapter or model_dir)  # on the backend the run trained with (its pixels)
    return model, processor


def _native(path: Path, config: dict[str, Any]) -> Path:
    """A native-layout directory for `path` (an original-layout checkpoint is converted once, cached)."""
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type") == "internvl":
        return path

    cache = (config.get("paths") or {}).get("cache_dir")
    if not cache:  # a model directory outside a run: the project's own cache (paths.cache_dir's default)

        cache = compose_config([]).paths.cache_dir
    return Path(ensure_converted(path, Path(cache)))


def load_for_inference(target: str, device: str | None = None, dtype: str | None = None) -> Loaded:
    """The model (eval mode, on `device`) and processor of a run dir, model dir, adapter dir or preset name."""
    path = Path(target)
    config: dict[str, Any] = {}
    if path.is_dir() and (path / "final").is_dir():  # a run directory
        config = run_config(path)
        final = path / "final"
    elif path.is_dir():
        config = run_config(path.parent) if path.name == "final" else {}
        final = path
    elif "/" in target or target.startswith("."):
        raise InferenceTargetError(f"{target}: no such directory (give a run directory, a model directory or a preset name)")
    else:
        return _preset(target, device, dtype)
    dev, torch_dtype = device_and_dtype(device, dtype)
    if (final / "adapter_config.json").is_file():
        base = Path(base_model_dir(final, config))
        if not (base / "config.json").is_file():
            raise InferenceTargetError(f"{final}: its LoRA base model {base} is not on this machine (no config.json)")
        model, processor = _from_dir(_native(base, config), final, torch_dtype)
        source = f"{final} (LoRA adapter on {base})"
    elif (final / "config.json").is_file():
        model, processor = _from_dir(_native(final, config), None, torch_dtype)
        source = str(final)
    else:
        raise InferenceTargetError(
            f"{final}: neither a model (config.json) nor a LoRA adapter (adapter_config.json); was the run saved "
            "(trainer.save_final=true) and did it finish?"
        )
    return Loaded(model.to(dev).eval(), processor, source, _template_of(processor, config), config)


def _preset(name: str, device: str | None, dtype: str | None) -> Loaded:
    """A preset (`model=<name>`), its weights found as a run finds them (never downloaded)."""
    from omegaconf import OmegaConf

    try:
        cfg = compose_config([f"model={name}"])
    except Exception as e:  # hydra: unknown option
        raise InferenceTargetError(f"{name}: not a directory and not a model preset (conf/model/): {e}") from None
    if dtype:  # the command's --dtype is this preset's setting (composed, then resolved again)
        cfg = compose_config([f"model={name}", f"model.dtype={dtype}"])
    weights = resolve_weights(cfg)
    checkpoint = native_checkpoint(weights, Path(cfg.paths.cache_dir), cfg.model.random_init)
    tokenizer = load_tokenizer(cfg.model, checkpoint)
    model = load_model(cfg.model, tokenizer, checkpoint)
    model.config.use_cache = True
    model.config.get_text_config().use_cache = True
    processor = load_processor(cfg.model, tokenizer, cfg.resolved.tokens_per_tile, checkpoint, cfg.data.system_message,
                               cfg.data.resize_backend)
    dev, _ = device_and_dtype(device, dtype)
    config = OmegaConf.to_container(cfg, resolve=False)
    return Loaded(model.to(dev).eval(), processor, f"preset {name} ({checkpoint or 'random init'})",
                  cfg.model.template, config)
