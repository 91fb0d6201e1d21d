"""Optimizer parameter groups: per-part learning rates and no weight decay on biases and norms."""

from __future__ import annotations

from typing import Any

import torch

from internvl_exp.models.registry import Family


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    lowered = name.lower()
    return param.ndim < 2 or name.endswith(".bias") or "norm" in lowered


def parameter_groups(model: Any, family: Family, opt_cfg: Any) -> list[dict[str, Any]]:
    """One group per (part, decay?) that has trainable parameters; each carries its names for reports."""
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    scales = dict(opt_cfg.part_lr_scale or {})
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = family.part_of(name)
        decay = not _no_decay(name, param)
        key = (part, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "part": part,
                "lr": opt_cfg.lr * float(scales.get(part, 1.0)),
                "weight_decay": opt_cfg.weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return list(groups.values())


def build_optimizer(model: Any, family: Family, opt_cfg: Any) -> torch.optim.Optimizer:
    groups = parameter_groups(model, family, opt_cfg)
    if not groups:
        raise ValueError("no trainable parameters: check the freeze strategy")
    torch_groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    return torch.optim.AdamW(torch_groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps)
