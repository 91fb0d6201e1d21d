"""A conversion plan: rules that turn named source tensors into named target tensors.

A rule reads one or more source tensors and writes one or more target tensors (a rename is 1 -> 1, the fused
vision qkv is 1 -> 3, stacked MoE experts are 3E -> 2); its `inverse` undoes `build` (export, models/convert/export.py). "Every source tensor used exactly once" means every
source key belongs to exactly one rule; `verify.check_coverage` checks that before any weight is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

Build = Callable[[list["torch.Tensor"]], list["torch.Tensor"]]


def identity(tensors: list["torch.Tensor"]) -> list["torch.Tensor"]:
    return tensors


@dataclass(frozen=True)
class Rule:
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    build: Build = identity
    why: str = "rename"  # shown in errors and in the report
    # targets -> sources, bit for bit (export to the original layout runs every rule backwards); None: identity.
    inverse: Build | None = None


def rename(source: str, target: str) -> Rule:
    return Rule((source,), (target,))


def split_rows(source: str, targets: tuple[str, ...], sizes: tuple[int, ...], why: str) -> Rule:
    """Cut dim 0 of one tensor into consecutive blocks (weight or bias)."""

    def build(ts: list["torch.Tensor"]) -> list["torch.Tensor"]:
        return [part.contiguous() for part in ts[0].split(list(sizes), dim=0)]

    def join(ts: list["torch.Tensor"]) -> list["torch.Tensor"]:
        import torch

        return [torch.cat(ts, dim=0)]

    return Rule((source,), targets, build, why, join)


@dataclass
class Plan:
    rules: list[Rule]
    # Source keys deliberately not written, with the reason (e.g. an lm_head tied to the embeddings).
    dropped: dict[str, str]

    def target_names(self) -> list[str]:
        return [t for r in self.rules for t in r.targets]
