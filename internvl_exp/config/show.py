"""Showing a resolved run spec: the YAML of `--cfg job` with each value's origin, and the header's settings row.

Light: omegaconf only.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from internvl_exp.config.resolve import origin

# The training settings the run header states, with where each came from: (key, label).
SETTINGS = (
    ("optimizer.lr", "lr"),
    ("optimizer.weight_decay", "weight decay"),
    ("optimizer.warmup_ratio", "warmup"),
    ("optimizer.scheduler", "schedule"),
    ("data.max_seq_length", "max_seq_length"),
    ("trainer.bf16", "bf16"),
    ("trainer.activation_checkpointing", "activation checkpointing"),
    ("model.dtype", "weights"),
    ("resolved.gradient_accumulation_steps", "accumulation"),
)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def settings_line(spec: Any) -> str:
    """`lr 4e-05 (recipe internvl2_8b), weight decay 0.05 (recipe internvl2_8b), ..., accumulation 4`."""
    pieces = []
    for key, label in SETTINGS:
        where = origin(spec, key)
        pieces.append(f"{label} {_value(OmegaConf.select(spec, key))}" + (f" ({where})" if where else ""))
    return ", ".join(pieces)


def annotated_yaml(spec: Any) -> str:
    """The spec as YAML, each line whose value a recipe or an override decided ending in `# <origin>`."""
    origins = dict(spec.resolved.origins) if spec.get("resolved") is not None else {}
    text = OmegaConf.to_yaml(spec)
    out, path = [], []  # path: (indent, key) of the enclosing mappings
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        while path and path[-1][0] >= indent:
            path.pop()
        key = stripped.split(":", 1)[0] if ":" in stripped and not stripped.startswith("- ") else None
        if key is None:
            out.append(line)
            continue
        dotted = ".".join([k for _, k in path] + [key])
        if stripped.endswith(":"):
            path.append((indent, key))
        where = origins.get(dotted)
        out.append(f"{line}  # {where}" if where and path[-1:] != [(indent, key)] else line)
    return "\n".join(out) + "\n"
