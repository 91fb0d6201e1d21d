"""What a run prints for people: the config as a tree (with print_config=true; the short header is
train/reporting/console_header.py), one summary line at the end."""

from __future__ import annotations

from typing import Any

import yaml

# Group order in the tree (anything else follows, then the top-level scalars).
ORDER = ("model", "data", "freeze", "deepspeed", "optimizer", "trainer", "logger", "distributed", "paths")


def print_config_tree(resolved: dict[str, Any]) -> None:
    """The resolved (already scrubbed) config as a rich tree: one branch per group, YAML inside."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("[bold]config[/bold]", guide_style="dim")
    groups = [k for k in ORDER if isinstance(resolved.get(k), dict)]
    groups += [k for k, v in resolved.items() if isinstance(v, dict) and k not in groups]
    for key in groups:
        branch = tree.add(f"[bold cyan]{key}[/bold cyan]")
        branch.add(Syntax(yaml.safe_dump(resolved[key], sort_keys=False).rstrip(), "yaml", theme="ansi_dark"))
    scalars = {k: v for k, v in resolved.items() if not isinstance(v, dict)}
    if scalars:
        tree.add(Syntax(yaml.safe_dump(scalars, sort_keys=False).rstrip(), "yaml", theme="ansi_dark"))
    Console(soft_wrap=True).print(tree)


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def summary_line(metrics: dict[str, Any]) -> str:
    """`run finished (completed): loss 6.5424 -> 0.9100 (means of the first/last 10 steps; run mean 2.3512) in
    150 steps (21.3 s), 5120 tokens/s, MFU 41.2%`."""
    tp = metrics.get("throughput") or {}
    mfu = tp.get("mfu")
    k = metrics.get("loss_window_steps")
    window = "first/last step" if k == 1 else f"means of the first/last {k} steps"
    parts = [
        f"run finished ({metrics.get('status')}): loss {_fmt(metrics.get('initial_loss'), '.4f')} -> "
        f"{_fmt(metrics.get('final_loss'), '.4f')} ({window}; run mean "
        f"{_fmt(metrics.get('train_loss'), '.4f')}) in {metrics.get('steps', 0)} steps "
        f"({_fmt(metrics.get('runtime_s'), '.1f')} s)",
        f"{_fmt(tp.get('tokens_per_s'), '.0f')} tokens/s",
    ]
    if mfu is not None:
        parts.append(f"MFU {mfu:.2%}")
    return ", ".join(parts)
