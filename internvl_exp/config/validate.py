"""Cross-group rules, checked right after composition and before any model or data is loaded.

Each rule names the config key(s) at fault and what to do instead. Light: no torch import.
"""

from __future__ import annotations

from typing import Any

from internvl_exp.config.schema import PART_MODES, PARTS

TEMPLATE_NAMES = ("internvl2_5", "internlm2-chat", "Hermes-2", "phi3-chat")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "warmup_stable_decay", "cosine_with_min_lr")


class ConfigError(ValueError):
    """The composed config breaks a rule; the message lists every broken rule."""


def config_problems(cfg: Any) -> list[str]:
    problems: list[str] = []
    parts = dict(cfg.freeze.parts)
    missing = [p for p in PARTS if p not in parts]
    unknown = [p for p in parts if p not in PARTS]
    if missing:
        problems.append(f"freeze.parts: missing part(s) {missing}; every part of {list(PARTS)} needs a mode")
    if unknown:
        problems.append(f"freeze.parts: unknown part(s) {unknown}; parts are {list(PARTS)}")
    for part, mode in parts.items():
        if mode not in PART_MODES:
            problems.append(f"freeze.parts.{part}: mode {mode!r} is not one of {list(PART_MODES)}")
    if parts and all(parts.get(p) == "frozen" for p in PARTS):
        problems.append("freeze.parts: every part is frozen, so nothing would train; set at least one part to full or lora")
    if cfg.model.source not in ("tiny", "pretrained"):
        problems.append(f"model.source: {cfg.model.source!r} is not 'tiny' or 'pretrained'")
    if cfg.model.source == "pretrained" and not cfg.model.path:
        problems.append(f"model.path: model {cfg.model.name!r} loads a pretrained checkpoint; set model.path=<dir>")
    if cfg.model.template not in TEMPLATE_NAMES:
        problems.append(f"model.template: {cfg.model.template!r} is not one of {list(TEMPLATE_NAMES)}")
    if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
        problems.append(f"model.dtype: {cfg.model.dtype!r} is not float32, bfloat16 or float16")
    if not 1 <= cfg.model.min_dynamic_patch <= cfg.model.max_dynamic_patch:
        problems.append("model.min_dynamic_patch/max_dynamic_patch: need 1 <= min_dynamic_patch <= max_dynamic_patch")
    if cfg.data.length_policy not in ("drop", "truncate"):
        problems.append(f"data.length_policy: {cfg.data.length_policy!r} is not 'drop' or 'truncate'")
    if cfg.data.on_error not in ("strict", "skip"):
        problems.append(f"data.on_error: {cfg.data.on_error!r} is not 'strict' or 'skip'")
    if not cfg.data.meta_path and not cfg.data.datasets:
        problems.append("data: no datasets; set data.meta_path=<meta.json> or data.datasets")
    if cfg.data.max_seq_length <= 0:
        problems.append("data.max_seq_length must be > 0")
    if cfg.optimizer.scheduler not in SCHEDULERS:
        problems.append(f"optimizer.scheduler: {cfg.optimizer.scheduler!r} is not one of {list(SCHEDULERS)}")
    if not 0.0 <= cfg.optimizer.warmup_ratio < 1.0:
        problems.append("optimizer.warmup_ratio must be in [0, 1)")
    for part in cfg.optimizer.part_lr_scale:
        if part not in PARTS:
            problems.append(f"optimizer.part_lr_scale.{part}: unknown part; parts are {list(PARTS)}")
    if cfg.trainer.max_steps <= 0 and cfg.trainer.num_train_epochs <= 0:
        problems.append("trainer: set trainer.max_steps > 0 or trainer.num_train_epochs > 0")
    if cfg.trainer.device not in ("auto", "cpu", "cuda"):
        problems.append(f"trainer.device: {cfg.trainer.device!r} is not auto, cpu or cuda")
    if cfg.trainer.save_strategy not in ("no", "steps", "epoch"):
        problems.append(f"trainer.save_strategy: {cfg.trainer.save_strategy!r} is not no, steps or epoch")
    if cfg.logger.name == "wandb" and cfg.logger.wandb is None:
        problems.append("logger.wandb: logger=wandb needs a wandb block (project, mode, ...)")
    if cfg.launcher.name == "local" and cfg.launcher.nproc_per_node != 1:
        problems.append("launcher.nproc_per_node: the local launcher runs one process; use a multi-process launcher")
    return problems


def validate(cfg: Any) -> None:
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
