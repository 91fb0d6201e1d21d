"""Stochastic depth (drop-path) for the vision tower, which transformers' native InternVL does not have.

InternViT (and timm's ViT) drop each layer's two residual branches per sample:
    h = h + drop_path(lambda_1 * attention(norm(h)));  h = h + drop_path(lambda_2 * mlp(norm(h)))
with the rate rising linearly from 0 at the first layer to `drop_path_rate` at the last.

The native `InternVLVisionLayer` computes exactly those branches as the outputs of its `attention` and `mlp`
submodules, only scaled by `lambda_1` / `lambda_2` (and a dropout) before the residual add. Drop-path is a
per-sample 0-or-1/keep factor, so it commutes with those elementwise scalings: applying it to the submodule's
output is the same as applying it to the branch. We therefore give each branch module a timm `DropPath` child
(`<layer>.attention.drop_path`, `<layer>.mlp.drop_path`; no parameters, so checkpoints are unchanged) and a
forward hook that passes the output through it. No transformers code is copied or replaced, and the DropPath
child follows the module's train/eval mode, so it is inactive in eval mode (and in frozen modules kept in eval).
"""

from __future__ import annotations

from typing import Any, Iterable

from timm.layers import DropPath
from torch import nn

from internvl_exp.models.registry import Family

BRANCHES = ("attention", "mlp")


def linear_drop_path_rates(rate: float, num_layers: int) -> list[float]:
    """0 at the first layer, `rate` at the last, linear in between (InternViT / timm's schedule)."""
    if num_layers == 1:
        return [rate]
    return [rate * i / (num_layers - 1) for i in range(num_layers)]


def _drop_branch_output(module: nn.Module, args: Any, output: Any) -> Any:
    # The attention module returns (output, weights); the MLP returns a tensor.
    if isinstance(output, tuple):
        return (module.drop_path(output[0]), *output[1:])
    return module.drop_path(output)


def add_vision_drop_path(model: nn.Module, family: Family, rate: float, layers: Iterable[int]) -> list[float]:
    """Give the listed vision layers drop-path at their scheduled rate. Returns the rate each layer got
    (0.0 where none); call before PEFT wraps the model."""
    stack = model.get_submodule(family.vision_layers)
    schedule = linear_drop_path_rates(rate, len(stack))
    chosen = set(layers)
    applied = []
    for i, layer in enumerate(stack):
        p = schedule[i] if i in chosen else 0.0
        if p > 0.0:
            for branch in BRANCHES:
                sub = getattr(layer, branch)
                if hasattr(sub, "drop_path"):
                    raise RuntimeError(f"{family.vision_layers}.{i}.{branch} already has drop-path")
                sub.drop_path = DropPath(p)
                sub.register_forward_hook(_drop_branch_output)
        applied.append(p)
    return applied


def vision_drop_path_rates(model: nn.Module) -> dict[str, float]:
    """{module name: drop probability} of every DropPath in the model (reports and tests)."""
    return {n: m.drop_prob for n, m in model.named_modules() if isinstance(m, DropPath)}
