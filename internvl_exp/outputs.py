"""The run directory: what goes where, and writing the config snapshots (scrubbed of secrets).

    <run_dir>/config.yaml  overrides.yaml  provenance/  train.log  metrics.json  checkpoints/  final/
    (+ deepspeed.json under DeepSpeed)
    (+ .run.lock, the launch's lock: launch/run_lock.py; config.attempt-N.yaml / overrides.attempt-N.yaml, what
       earlier attempts of a resumed run were launched with)
    (+ wandb/ or tensorboard/ with those loggers)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from internvl_exp.redact import scrub


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
    def deepspeed(self) -> Path:
        return self.root / "deepspeed.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"


def write_config(run_dir: RunDir, resolved: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Write config.yaml and overrides.yaml with secrets scrubbed; return the config as saved."""
    run_dir.root.mkdir(parents=True, exist_ok=True)
    text = scrub(yaml.safe_dump(resolved, sort_keys=False))
    overrides_text = scrub(yaml.safe_dump(list(overrides)))
    keep_earlier_attempt(run_dir, text, overrides_text)
    run_dir.config.write_text(text)
    run_dir.overrides.write_text(overrides_text)
    return yaml.safe_load(text)


def keep_earlier_attempt(run_dir: RunDir, config_text: str, overrides_text: str) -> None:
    """A re-run (resume) with other settings keeps the earlier attempt's config.yaml / overrides.yaml as
    config.attempt-N.yaml / overrides.attempt-N.yaml (N = 1, 2, ... oldest first) instead of overwriting them."""
    old = [(run_dir.config, config_text), (run_dir.overrides, overrides_text)]
    if all(not p.is_file() or p.read_text() == new for p, new in old):
        return
    n = 1
    while any((run_dir.root / f"{p.stem}.attempt-{n}.yaml").exists() for p, _ in old):
        n += 1
    for p, _ in old:
        if p.is_file():
            p.replace(run_dir.root / f"{p.stem}.attempt-{n}.yaml")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(scrub(json.dumps(data, indent=2, sort_keys=False, default=str)) + "\n")
    tmp.replace(path)


def metric_value(metrics: dict[str, Any], key: str) -> Any:
    """`metrics[key]`, with dots reaching into nested dicts (`throughput.tokens_per_s`)."""
    node: Any = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            flat = sorted(k for k, v in metrics.items() if not isinstance(v, (dict, list)))
            raise KeyError(
                f"optimized_metric={key!r}: no such key in metrics.json; use one of {flat} "
                "(or a dotted path into a nested block, e.g. throughput.tokens_per_s)"
            )
        node = node[part]
    return node


# In final/ of a LoRA run: where the base weights of the run live (written by train/tuning/lora.py).
BASE_SUBDIR = "base"


def base_model_dir(final_dir: Path, config: dict[str, Any] | None = None) -> str:
    """Where the base model of an adapter in `final_dir` lives: `final/base/` when the run saved it, else the
    run's `model.path`, else the adapter's own `base_model_name_or_path`."""
    local = final_dir / BASE_SUBDIR
    if (local / "config.json").exists():
        return str(local)
    path = ((config or {}).get("model") or {}).get("path")
    if path:
        return str(path)
    adapter = json.loads((final_dir / "adapter_config.json").read_text())
    if adapter.get("base_model_name_or_path"):
        return str(adapter["base_model_name_or_path"])
    raise FileNotFoundError(
        f"{final_dir}: no base model to merge into (no {BASE_SUBDIR}/ folder, no model.path in the run config, "
        "no base_model_name_or_path in adapter_config.json); pass --base DIR"
    )
