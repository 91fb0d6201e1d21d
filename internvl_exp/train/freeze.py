"""Freeze strategies in terms of parts: set `requires_grad` per part and report what trains."""

from __future__ import annotations

from typing import Any, Mapping

from internvl_exp.models.registry import PARTS, Family


def apply_freeze(model: Any, family: Family, modes: Mapping[str, str]) -> None:
    """Freeze (`frozen`) or unfreeze (`full`) each part's parameters."""
    for mode in modes.values():
        if mode not in ("frozen", "full"):
            raise NotImplementedError(f"part mode {mode!r} is not available yet (frozen and full are)")
    for name, param in model.named_parameters():
        param.requires_grad = modes[family.part_of(name)] != "frozen"


def parameter_report(model: Any, family: Family) -> dict[str, dict[str, int]]:
    """{part: {"total": n, "trainable": n}} plus a "total" row."""
    report = {p: {"total": 0, "trainable": 0} for p in PARTS}
    for name, param in model.named_parameters():
        row = report[family.part_of(name)]
        row["total"] += param.numel()
        if param.requires_grad:
            row["trainable"] += param.numel()
    report["total"] = {k: sum(report[p][k] for p in PARTS) for k in ("total", "trainable")}
    return report
