"""Resolve once: the composed config becomes the run spec every process and tool uses.

`resolve(cfg)` runs in the Hydra job (and in each tool, and for `--cfg job`) and decides, in this order:
    1. the model recipe's defaults for the keys the run left at null (model.recipe: lr, weight decay, warmup,
       schedule, max_seq_length, bf16, activation checkpointing), recording where each came from;
    2. validation, once, of that config (config/validate.py): every problem in one message;
    3. the derived numbers: processes launched, gradient accumulation, image tokens per tile, the weights'
       dtype, the eval strategy and the optimised metric -- each decided here and nowhere else.
The result is what config.yaml holds: no `auto`, no null that a later step fills. Workers and tools load it with
`load_run_config`, typed by the same schema, and never write into it.

Light: omegaconf and config-time modules only (no torch).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf, open_dict

from internvl_exp.config.batch import accumulation_steps
from internvl_exp.config.chunked_loss import use_chunked_loss
from internvl_exp.config.eval_settings import eval_strategy, optimized_metric
from internvl_exp.config.geometry import tokens_per_tile
from internvl_exp.config.precision import weights_dtype
from internvl_exp.config.recipe import RECIPE_KEYS, apply_recipe
from internvl_exp.config.schema import Config, ResolvedConfig
from internvl_exp.config.validate import config_problems
from internvl_exp.config.world import planned_world_size, world_problems
from internvl_exp.errors import ConfigError
from internvl_exp.redact import scrub


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys a list of Hydra overrides sets (`a.b=1`, `+a.b=1`, `++a.b=1`; not `~a.b`, not groups)."""
    keys = []
    for o in overrides:
        if o.startswith("~") or "=" not in o:
            continue
        keys.append(o.lstrip("+").split("=", 1)[0])
    return keys


def resolve(cfg: DictConfig, overrides: Iterable[str] = (), check: bool = True,
            env: dict[str, str] | None = None) -> DictConfig:
    """The resolved run spec for a composed config (a new object; `cfg` is not changed).

    `overrides`: the command line's, to mark those values' origin. `check=False` (tests and tools that
    inspect an invalid config) fills and derives what it can and raises nothing."""
    env = os.environ if env is None else env
    problems: list[str] = []
    if check and any(k.split(".")[0] == "resolved" for k in override_keys(overrides)):
        problems.append("resolved: decided by the framework from the rest of the config; remove resolved.* "
                        "from the overrides")
    spec = _copy(cfg)
    # Resolving a spec again (a tool given a run's config) keeps what the first resolution recorded.
    origins = {**(dict(cfg.resolved.origins) if cfg.get("resolved") is not None else {}), **apply_recipe(spec)}
    for key in override_keys(overrides):
        if key in RECIPE_KEYS or not OmegaConf.is_config(OmegaConf.select(spec, key, default=None)):
            origins[key] = "override"
    world = planned_world_size(spec.distributed, env)
    spec.resolved = ResolvedConfig(world_size=world, origins=origins)
    if check:
        problems += world_problems(spec.distributed, env) + config_problems(spec)
        if problems:
            raise ConfigError(scrub("invalid configuration:\n  - " + "\n  - ".join(problems)))
    m, t = spec.model, spec.trainer
    try:
        spec.resolved.gradient_accumulation_steps = accumulation_steps(t, world)
    except ConfigError:
        spec.resolved.gradient_accumulation_steps = t.gradient_accumulation_steps  # check=False only
    if m.patch_size > 0:  # (a zero patch size is a validation problem; check=False gets here too)
        spec.resolved.tokens_per_tile = tokens_per_tile(m.image_size, m.patch_size, m.downsample_ratio)
    if t.bf16 is not None:
        m.dtype = weights_dtype(spec)
    t.eval_strategy = eval_strategy(spec)
    try:  # auto -> true/false for this model (config/chunked_loss.py)
        if str(t.chunked_loss).strip().lower() == "auto":
            with open_dict(spec):
                spec.resolved.origins["trainer.chunked_loss"] = f"auto for model={m.name}"
        t.chunked_loss = str(use_chunked_loss(t.chunked_loss, m.name)).lower()
    except ConfigError:
        pass  # check=False only: validation names it
    spec.optimized_metric = optimized_metric(spec)
    return spec


def resolve_device(spec: DictConfig) -> None:
    """trainer.device=auto decided where the training processes run: in the Hydra job for a single process and
    torchrun on this machine (imports torch: called once the config is known to be valid); a SLURM run's
    nodes decide for themselves, so there it stays auto."""
    if spec.trainer.device == "auto" and spec.distributed.name != "slurm":
        import torch

        spec.trainer.device = "cuda" if torch.cuda.is_available() else "cpu"
        with open_dict(spec):
            spec.resolved.origins["trainer.device"] = "detected"


def _copy(cfg: DictConfig) -> DictConfig:
    """A copy with its interpolations resolved and without Hydra's node (which resolves only in Hydra's job). Keys
    the schema does not know (`+optimizer.lrr=1`) stay, for validation to name them."""
    spec = copy.deepcopy(cfg)
    with open_dict(spec):
        spec.pop("hydra", None)
    OmegaConf.resolve(spec)
    return spec


def load_run_config(path: str | Path) -> DictConfig:
    """A run's config.yaml (the resolved spec) as the same typed object the Hydra job had."""

    spec = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
    OmegaConf.set_struct(spec, True)
    return spec


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's spec (load_run_config) as plain data, {} when the directory has no config.yaml: what
    the tools that start from a run (chat, predict, merge_lora, export) read."""
    path = Path(run_dir) / "config.yaml"
    return OmegaConf.to_container(load_run_config(path), resolve=True) if path.is_file() else {}


def origin(cfg: Config, key: str) -> str | None:
    """Where the resolved value of `key` came from ("recipe internvl2_8b", "override"), None for the config
    groups' own values."""
    resolved = cfg.get("resolved")
    return None if resolved is None else resolved.origins.get(key)
