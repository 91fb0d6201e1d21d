"""What a resume does with settings that differ from the run's: refuse what cannot apply, list what does.

A resume restores the model, optimizer, scheduler, RNG and data position from the checkpoint, so a changed
`optimizer.lr` would be written to config.yaml while the restored schedule keeps the old one, and a changed
freeze or DeepSpeed stage would fail late, after config.yaml was overwritten. The job compares the new config
with the one the checkpoint was trained with (its `run_config.yaml`, else its run directory's config.yaml)
before it writes anything:

- keys under REFUSED (the model, what trains, the optimizer and schedule, the data and its order, the batch
  and step counts, precision, DeepSpeed, the seed) refuse the resume, naming each key with both values;
- every other difference (logging, saving, evaluation, loggers, dataloader workers, ...) applies from the
  resumed step on and is listed in the log;
- IGNORED keys (names, paths, the resume key itself) are not compared.

Earlier attempts' config.yaml files are kept beside it (outputs.py write_config: config.attempt-N.yaml).
Light: standard library + yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import yaml

from internvl_exp.config.schema import ObjectiveConfig
from internvl_exp.redact import scrub
from internvl_exp.train.checkpointing.checkpoints import RUN_CONFIG
from internvl_exp.train.checkpointing.resume import RunRefused

# Prefixes of dotted keys (a key matches itself and everything under it).
IGNORED = ("run_name", "sweep_name", "experiment_name", "resume", "paths", "secrets", "print_config",
           "optimized_metric", "hydra", "model.recipe", "resolved")
REFUSED = ("model", "freeze", "optimizer", "deepspeed", "seed", "data", "objective", "trainer.max_steps",
           "trainer.num_train_epochs", "trainer.per_device_train_batch_size", "trainer.global_batch_size",
           "trainer.gradient_accumulation_steps", "trainer.bf16", "trainer.pure_half_precision")
# Exceptions inside REFUSED: they change how the run computes, not what the checkpoint holds.
APPLIES = ("model.attn_implementation", "optimizer.max_grad_norm", "optimizer.fused", "data.scan_workers",
           "data.plan_cache", "data.generate_demo", "data.on_error")
# A ZeRO checkpoint is sharded per rank: it loads only into the same number of processes.
WORLD = ("distributed.nproc_per_node", "distributed.nnodes", "distributed.nodes", "distributed.gpus_per_node")


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], tree


def run_config_of(checkpoint: Path) -> Path | None:
    """The config the checkpoint's run was trained with."""
    for path in (Path(checkpoint) / RUN_CONFIG, Path(checkpoint).parent.parent / "config.yaml"):
        if path.is_file():
            return path
    return None


def _show(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    text = text[:-4].strip() if text.endswith("\n...") or text.endswith(" ...") else text
    return text if len(text) <= 60 else text[:57] + "..."


def compare(new: dict[str, Any], old: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(refused, applied): 'key (old -> new)' for each differing key."""
    if "objective" in new and "objective" not in old:  # a run from before the objective group trained sft
        from dataclasses import asdict

        old = {**old, "objective": asdict(ObjectiveConfig())}
    before, after = dict(_flatten(old)), dict(_flatten(new))
    sharded = bool((before.get("deepspeed.stage") or 0) or (after.get("deepspeed.stage") or 0))
    refused, applied = [], []
    for key in sorted(before.keys() | after.keys()):
        if _under(key, IGNORED):
            continue
        a, b = before.get(key, "<unset>"), after.get(key, "<unset>")
        if a == b or (key == "trainer.device" and b == "auto"):  # auto: detected later, as the run's was
            continue
        line = f"{key} ({_show(a)} -> {_show(b)})"
        cannot = (_under(key, REFUSED) and not _under(key, APPLIES)) or (sharded and _under(key, WORLD))
        (refused if cannot else applied).append(line)
    return refused, applied


def check_resume_config(config: dict[str, Any], checkpoint: Path | None) -> list[str]:
    """Compare the resolved `config` of this launch with the checkpoint's run config. Raises RunRefused naming
    every key that cannot apply; returns the differences that apply from the resumed step on."""
    path = run_config_of(checkpoint) if checkpoint is not None else None
    if path is None:
        return []
    old = yaml.safe_load(path.read_text()) or {}
    new = yaml.safe_load(scrub(yaml.safe_dump(config, sort_keys=False)))  # compared as saved: scrubbed
    refused, applied = compare(new, old)
    if refused:
        raise RunRefused(
            f"resume from {checkpoint}: {len(refused)} setting(s) differ from the run's ({path}) and cannot apply to "
            f"a resumed run (the checkpoint restores model, optimizer, schedule and data position): "
            f"{'; '.join(refused)}. Re-run with the run's values, or start a new run from its weights "
            "(model.path=<run_dir>/final, or resume=false)")
    return applied
