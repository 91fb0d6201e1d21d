"""The run directory: what goes where, and writing the config snapshots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def overrides(self) -> Path:
        return self.root / "overrides.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def log(self) -> Path:
        return self.root / "train.log"


def write_config(run_dir: RunDir, resolved: dict[str, Any], overrides: list[str]) -> None:
    run_dir.root.mkdir(parents=True, exist_ok=True)
    run_dir.config.write_text(yaml.safe_dump(resolved, sort_keys=False))
    run_dir.overrides.write_text(yaml.safe_dump(list(overrides)))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
