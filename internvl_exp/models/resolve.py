"""Finding a model's weights on this machine, offline, before anything heavy runs.

`model.path` wins when set; otherwise the preset's Hub ids (native first, then original) are looked up in the
standard Hugging Face cache and in `paths.models_dir`. No network, ever: a missing checkpoint stops the run with
one message naming the Hub id, every place looked, and the command that fetches it. The directory found is then
checked against the preset (an InternVL checkpoint, of the preset's size and tile geometry), from its
config.json alone. Light: standard library only (no torch, no transformers, no huggingface_hub).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from internvl_exp.config.arch_rules import random_init_refusal
from internvl_exp.config.schema import Config, ModelConfig
from internvl_exp.errors import UserError

NATIVE_TYPE = "internvl"  # transformers' InternVLForConditionalGeneration
ORIGINAL_TYPE = "internvl_chat"  # OpenGVLab's remote-code InternVLChatModel (converted on first use)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


class WeightsNotFoundError(UserError):
    """No copy of the preset's weights on this machine."""


class CheckpointError(UserError):
    """A checkpoint directory that is missing, not InternVL, incomplete, or not the preset's model."""


@dataclass(frozen=True)
class Weights:
    """A checkpoint directory found for the model config, with its config.json."""

    path: Path
    config: dict[str, Any] = field(repr=False)
    # Where it was found: "model.path", "HF cache" or "paths.models_dir".
    origin: str = "model.path"

    @property
    def layout(self) -> str:
        return "native" if self.config.get("model_type") == NATIVE_TYPE else "original"

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"


def hub_ids(model_cfg: ModelConfig) -> list[str]:
    """The preset's Hub repos, native layout first (no conversion needed), for the chosen variant."""
    ids = model_cfg.variants[model_cfg.variant] if model_cfg.variant else model_cfg.hub
    return [i for i in (ids.native, ids.original) if i]


def hf_hub_cache(env: dict[str, str] | None = None) -> Path:
    """The HF hub cache directory, by huggingface_hub's rules: HF_HUB_CACHE, else HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    env = os.environ if env is None else env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _cache_snapshot(cache: Path, repo_id: str) -> Path | None:
    """The snapshot `refs/main` points at (else the only / newest snapshot) of a repo in the HF cache."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        snap = snapshots / ref.read_text().strip()
        if snap.is_dir():
            return snap
    found = sorted((p for p in snapshots.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    return found[-1] if found else None


def candidate_dirs(repo_id: str, models_dir: Path | None, env: dict[str, str] | None = None) -> list[tuple[str, Path]]:
    """(origin, directory) pairs where a copy of `repo_id` may be, in search order."""
    org, name = repo_id.split("/", 1) if "/" in repo_id else ("", repo_id)
    cache = hf_hub_cache(env)
    snap = _cache_snapshot(cache, repo_id)
    places = [("HF cache", snap or cache / ("models--" + repo_id.replace("/", "--")) / "snapshots")]
    if models_dir is not None:
        places.append(("paths.models_dir", models_dir / name))
        if org:
            places.append(("paths.models_dir", models_dir / org / name))
    return places


def fetch_command(repo_id: str, models_dir: Path | None) -> str:
    target = (models_dir / repo_id.split("/")[-1]) if models_dir is not None else Path(repo_id.split("/")[-1])
    return f"hf download {repo_id} --local-dir {target}"


def find_weights(model_cfg: ModelConfig, models_dir: Path | None, env: dict[str, str] | None = None) -> Weights | None:
    """The checkpoint for `model_cfg`, or None when no copy of its Hub repos is on this machine. `model.path`
    is used as given (errors when it is not a checkpoint)."""
    if model_cfg.path:
        return read_checkpoint(Path(model_cfg.path).expanduser(), "model.path")
    for repo_id in hub_ids(model_cfg):
        for origin, directory in candidate_dirs(repo_id, models_dir, env):
            if (directory / "config.json").is_file():
                return read_checkpoint(directory, origin)
    return None


def not_found_message(model_cfg: ModelConfig, models_dir: Path | None, env: dict[str, str] | None = None) -> str:
    ids = hub_ids(model_cfg)
    looked = [str(d) for repo_id in ids for _, d in candidate_dirs(repo_id, models_dir, env)]
    variant = f" model.variant={model_cfg.variant}" if model_cfg.variant else ""

    random = "" if random_init_refusal(model_cfg) else ", or model.random_init=true for random weights of this size"
    return (
        f"model={model_cfg.name}{variant}: no weights on this machine for Hub id {' or '.join(ids)} "
        f"(looked in: {', '.join(looked)}). Fetch them with: {fetch_command(ids[0], models_dir)} "
        f"- or set model.path=DIR to a local copy{random}"
    )


def read_checkpoint(directory: Path, origin: str) -> Weights:
    """A directory's config.json, refusing anything that is not an InternVL checkpoint."""
    where = "model.path" if origin == "model.path" else origin
    if not directory.exists():
        raise CheckpointError(f"{where}: {directory} does not exist; point model.path at a checkpoint directory")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{where}: {directory} has no config.json, so it is not a checkpoint directory")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: {config_file} is not readable JSON ({e})") from None
    model_type = config.get("model_type")
    if model_type not in (NATIVE_TYPE, ORIGINAL_TYPE):
        raise CheckpointError(
            f"{where}: {config_file} has model_type {model_type!r}, not an InternVL checkpoint "
            f"({NATIVE_TYPE!r} or {ORIGINAL_TYPE!r})"
        )
    return Weights(path=directory, config=config, origin=origin)


def _parts(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(vision config, text config) of either layout."""
    text = config.get("text_config") or config.get("llm_config") or {}
    return config.get("vision_config") or {}, text


def _square(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) else value


def preset_mismatches(model_cfg: ModelConfig, weights: Weights) -> list[str]:
    """Where the checkpoint's config.json disagrees with the preset (sourced dims, tile geometry, image token)."""
    vision, text = _parts(weights.config)
    out = []
    for part, ckpt, arch in (("vision", vision, model_cfg.arch.vision), ("text", text, model_cfg.arch.text)):
        for key in ("hidden_size", "num_hidden_layers"):
            if arch[key] is not None and key in ckpt and ckpt[key] != arch[key]:
                out.append(f"{part} {key} {ckpt[key]} (the preset has {arch[key]}: model.arch.{part}.{key})")
    for key, ours, theirs in _geometry_mismatches(model_cfg, weights):
        out.append(f"{key.split('.', 1)[1]} {theirs} (the config has {key}={ours})")
    return out


def _geometry_mismatches(model_cfg: ModelConfig, weights: Weights) -> list[tuple[str, Any, Any]]:
    """(key, the config's value, the checkpoint's) for each tile-geometry / image-token setting that differs."""
    vision, _ = _parts(weights.config)
    size = _square(vision.get("image_size", weights.config.get("force_image_size")))
    checks = (
        ("model.image_size", model_cfg.image_size, size),
        ("model.patch_size", model_cfg.patch_size, _square(vision.get("patch_size"))),
        ("model.downsample_ratio", model_cfg.downsample_ratio, weights.config.get("downsample_ratio")),
        ("model.image_token_id", model_cfg.image_token_id, weights.config.get("image_token_id")),
    )
    return [(k, ours, theirs) for k, ours, theirs in checks if ours is not None and theirs is not None and ours != theirs]


def check_weights(model_cfg: ModelConfig, weights: Weights) -> None:
    """Refuse a checkpoint that is not the preset's model, or an incomplete download (random init needs only
    the tokenizer, so it skips the weight-file check)."""
    bad = preset_mismatches(model_cfg, weights)
    where = "model.path" if weights.origin == "model.path" else f"model={model_cfg.name} ({weights.origin})"
    if bad:
        # The tile geometry is set on the command line; a preset's sourced dims name another model.
        fixes = " ".join(f"{key}={theirs}" for key, _, theirs in _geometry_mismatches(model_cfg, weights))
        advice = (f"set {fixes} to match it" if model_cfg.name == "local" and fixes else
                  "use the preset of that checkpoint, or model=local model.path=DIR for any InternVL checkpoint"
                  + (f" (with {fixes})" if fixes else ""))
        raise CheckpointError(
            f"{where}: {weights.config_file} does not match model={model_cfg.name}: it has {'; '.join(bad)}; "
            f"{advice}"
        )
    if not model_cfg.random_init and not any(next(weights.path.glob(p), None) for p in WEIGHT_PATTERNS):
        raise CheckpointError(
            f"{where}: {weights.path} has a config.json but no weight files (*.safetensors); the copy is "
            "incomplete - fetch it again"
        )


RANDOM_INIT = "random init"  # resolved.weights_origin of a run with no checkpoint


def record_weights(spec: Any, weights: Weights | None) -> None:
    """Write the launch's answer into the run spec (resolved.weights_*), so no process looks again."""
    spec.resolved.weights_path = str(weights.path) if weights is not None else None
    spec.resolved.weights_origin = weights.origin if weights is not None else RANDOM_INIT


def weights_of(cfg: Config) -> Weights | None:
    """The run's checkpoint as the launch found and checked it (resolved.weights_*), else looked up now
    (resolve_weights: a spec the launch did not record, e.g. a tool's)."""
    resolved = cfg.get("resolved")
    if resolved is None or resolved.weights_origin is None:
        return resolve_weights(cfg)
    if resolved.weights_origin == RANDOM_INIT:
        return None
    path = Path(resolved.weights_path)
    return Weights(path, json.loads((path / "config.json").read_text()), resolved.weights_origin)


def resolve_weights(cfg: Config, env: dict[str, str] | None = None) -> Weights | None:
    """The checked checkpoint of the run's model, or None for a random model (model=tiny, model.random_init=true
    without a local copy). Raises WeightsNotFoundError / CheckpointError (user errors, one line each)."""
    model_cfg = cfg.model
    models_dir = Path(cfg.paths.models_dir).expanduser() if cfg.paths.get("models_dir") else None
    weights = find_weights(model_cfg, models_dir, env)
    if weights is None:
        if model_cfg.random_init:
            return None
        raise WeightsNotFoundError(not_found_message(model_cfg, models_dir, env))
    check_weights(model_cfg, weights)
    return weights
