"""AdamW with parameter groups by part: per-part learning rates, optional layer-wise lr decay for the ViT, and
no weight decay on biases, norms and (configurably) embeddings.

The same groups reach the optimizer with and without DeepSpeed: `InternVLTrainer.create_optimizer` calls
`build_optimizer`, and HF calls `create_optimizer` under DeepSpeed when the DS config has no `optimizer` block.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from internvl_exp.config.schema import OptimizerConfig
from internvl_exp.errors import ConfigError
from internvl_exp.models.registry import Family
from internvl_exp.train.tuning.freeze import num_vision_layers


def no_weight_decay(family: Family, name: str, param: torch.nn.Parameter, exclude_embeddings: bool) -> bool:
    """Biases, norm weights and other vectors (layer scales) never decay; embeddings optionally not."""
    if param.ndim < 2 or name.endswith(".bias") or "norm" in family.base_name(name).lower():
        return True
    return exclude_embeddings and family.is_embedding_param(name)


def _vision_layer_scale(family: Family, name: str, decay: float, n_layers: int) -> tuple[str, float]:
    """(label, lr factor) for layer-wise lr decay: the last ViT layer keeps the vision lr; each layer below gets
    one more factor of `decay`; the stem (patch / position embeddings) one more than layer 0; anything after the
    layer stack (a final norm) keeps the vision lr."""
    idx = family.vision_layer_index(name)
    if idx is not None:
        return f"layer{idx}", decay ** (n_layers - 1 - idx)
    base = family.base_name(name)
    if base.startswith(family.vision_stem + "."):
        return "stem", decay**n_layers
    return "post", 1.0


def parameter_groups(model: Any, family: Family, opt_cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """One group per (part or `embeddings`, ViT layer when layer decay is on, decay?) that has trainable
    parameters. Each group carries `name`, `part` and the parameter `names` for reports."""
    scales = {str(k): float(v) for k, v in dict(opt_cfg.part_lr_scale or {}).items()}
    layer_decay = getattr(opt_cfg, "vision_layer_decay", None)
    exclude_embeddings = bool(getattr(opt_cfg, "no_decay_embeddings", True))
    n_layers = num_vision_layers(model, family) if layer_decay else 0
    groups: dict[tuple[str, str, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = family.part_of(name)
        key_part = "embeddings" if family.is_embeddings(name) else part
        scale = scales.get(key_part, scales.get(part, 1.0))
        label = ""
        if layer_decay and part == "vision":
            label, factor = _vision_layer_scale(family, name, float(layer_decay), n_layers)
            scale *= factor
        decay = not no_weight_decay(family, name, param, exclude_embeddings)
        key = (key_part, label, decay)
        if key not in groups:
            groups[key] = {
                "name": ".".join(x for x in (key_part, label) if x) + ("" if decay else ".no_decay"),
                "part": part,
                "params": [],
                "names": [],
                "lr": opt_cfg.lr * scale,
                "weight_decay": opt_cfg.weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    # HF logs the first group's lr as `learning_rate`: put groups at the base lr first so the log shows it.
    return sorted(groups.values(), key=lambda g: g["lr"] != opt_cfg.lr)


def fused_supported(params: Iterable[torch.Tensor]) -> bool:
    """torch's fused AdamW runs on CPU and common accelerators (CPU since torch 2.4), for floating tensors."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    return all(p.device.type in devices and p.is_floating_point() for p in params)


def build_optimizer(model: Any, family: Family, opt_cfg: OptimizerConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, family, opt_cfg)
    if not groups:
        raise ConfigError("no trainable parameters: every part is frozen; check the freeze strategy (freeze=...)")
    torch_groups = [{k: v for k, v in g.items() if k not in ("names", "part")} for g in groups]
    params = [p for g in groups for p in g["params"]]
    fused = getattr(opt_cfg, "fused", None)
    if fused is None:
        fused = fused_supported(params)
    return torch.optim.AdamW(
        torch_groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps, fused=bool(fused)
    )
