"""What a `resume` setting means (train/checkpointing/resume.py acts on it): checked with the rest of the config.

Light: no import of the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NEVER = ("false", "never", "no", "0")
MUST = ("true", "yes", "1")


def resume_mode(value: Any) -> str:
    """'auto' | 'must' | 'never' | 'path' for a `resume` value (Hydra gives `false` as a bool)."""
    if value is None or value is True or str(value).strip().lower() in MUST:
        return "must" if value is not None else "auto"
    if value is False or str(value).strip().lower() in NEVER:
        return "never"
    if str(value).strip().lower() == "auto":
        return "auto"
    return "path"


def resume_problems(value: Any) -> list[str]:
    """Config validation: a `resume` path must exist (checked before any run directory is made)."""
    if resume_mode(value) == "path" and not Path(str(value)).expanduser().exists():
        return [f"resume: {value!r} is not auto, true, false or an existing run directory / checkpoint "
                "(outputs/<experiment>/<run_name> or .../checkpoints/checkpoint-N)"]
    return []
