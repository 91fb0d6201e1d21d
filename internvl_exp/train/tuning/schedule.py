"""Learning-rate schedules: our `optimizer.scheduler` names mapped onto HF's `lr_scheduler_type`, and the
scheduler kwargs that depend on the number of training steps (known only when training starts)."""

from __future__ import annotations

from typing import Any

from internvl_exp.config.schema import OptimizerConfig

# HF's "constant" silently ignores warmup; ours warms up like every other schedule.
_HF_NAME = {"constant": "constant_with_warmup"}


def hf_scheduler_name(name: str) -> str:
    return _HF_NAME.get(name, name)


def scheduler_kwargs(opt_cfg: OptimizerConfig, num_training_steps: int) -> dict[str, Any]:
    """`lr_scheduler_kwargs` for HF's get_scheduler. warmup_stable_decay needs `num_decay_steps`, which we
    derive from `optimizer.decay_ratio`; cosine_with_min_lr needs its floor. `scheduler_kwargs` wins."""
    name = hf_scheduler_name(opt_cfg.scheduler)
    kwargs: dict[str, Any] = {}
    if name == "warmup_stable_decay":
        kwargs = {
            "num_decay_steps": max(1, round(float(opt_cfg.decay_ratio) * num_training_steps)),
            "min_lr_ratio": float(opt_cfg.min_lr_ratio),
        }
    elif name == "cosine_with_min_lr":
        kwargs = {"min_lr_rate": float(opt_cfg.min_lr_ratio)}
    kwargs.update(dict(getattr(opt_cfg, "scheduler_kwargs", None) or {}))
    return kwargs
