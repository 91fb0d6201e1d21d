"""What trains, as data and as a table: parameters per part and the optimizer's groups.

`parameter_report` and `optimizer_group_report` return plain JSON-able data; run.py logs them as a table at the
start of a run, writes them to `params.json` in the run directory and to `metrics.json`. A logger (wandb) can
add `training_report(...)` to its run config.
"""

from __future__ import annotations

import io
from typing import Any

from internvl_exp.config.choices import PARTS
from internvl_exp.models.registry import Family

EMBEDDINGS_ROW = "llm.embeddings"  # a subset of the llm row, not added to the total


def parameter_report(model: Any, family: Family) -> dict[str, dict[str, int]]:
    """{part: {"total", "trainable", "lora"}} for each part, an `llm.embeddings` row (part of llm) and "total".

    `total` counts the base weights plus LoRA adapters; PEFT's frozen original copies of `modules_to_save`
    modules are left out so totals match the plain model. `lora` counts the adapters' parameters."""
    report = {p: {"total": 0, "trainable": 0, "lora": 0} for p in (*PARTS, EMBEDDINGS_ROW)}
    for name, param in model.named_parameters():
        if family.is_peft_original(name):
            continue
        rows = [report[family.part_of(name)]]
        if family.is_embeddings(name):
            rows.append(report[EMBEDDINGS_ROW])
        for row in rows:
            row["total"] += param.numel()
            row["trainable"] += param.numel() if param.requires_grad else 0
            row["lora"] += param.numel() if family.is_lora_param(name) else 0
    report["total"] = {k: sum(report[p][k] for p in PARTS) for k in ("total", "trainable", "lora")}
    return report


def optimizer_group_report(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{name, part, lr, weight_decay, tensors, parameters}] for groups from `optim.parameter_groups` (or a torch
    optimizer's param_groups, which keep our `name`)."""
    return [
        {
            "name": g.get("name", f"group{i}"),
            "part": g.get("part"),
            "lr": float(g.get("initial_lr", g["lr"])),
            "weight_decay": float(g["weight_decay"]),
            "tensors": len(g["params"]),
            "parameters": sum(p.numel() for p in g["params"]),
        }
        for i, g in enumerate(groups)
    ]


def training_report(model: Any, family: Family, groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Both reports in one dict (params.json; a logger's run config)."""
    return {"parameters": parameter_report(model, family), "optimizer_groups": optimizer_group_report(groups)}


def format_report(report: dict[str, Any]) -> str:
    """The two tables as text (rich), for the log."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    params = Table(title="parameters per part", box=box.SIMPLE_HEAD)
    for col in ("part", "total", "trainable", "lora", "trainable %"):
        params.add_column(col, justify="left" if col == "part" else "right")
    for part, row in report["parameters"].items():
        share = 100.0 * row["trainable"] / row["total"] if row["total"] else 0.0
        params.add_row(part, f"{row['total']:,}", f"{row['trainable']:,}", f"{row['lora']:,}", f"{share:.1f}")

    groups = Table(title="optimizer groups", box=box.SIMPLE_HEAD)
    for col in ("group", "lr", "weight decay", "tensors", "parameters"):
        groups.add_column(col, justify="left" if col == "group" else "right")
    for g in report["optimizer_groups"]:
        groups.add_row(g["name"], f"{g['lr']:.3g}", f"{g['weight_decay']:g}", str(g["tensors"]), f"{g['parameters']:,}")

    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=False, color_system=None)
    console.print(params)
    console.print(groups)
    return buf.getvalue()
