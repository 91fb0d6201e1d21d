"""Rules about what may be in a config at all: only schema keys, and never a credential.

Hydra's `+key=value` adds a key even to a node the schema types as a dataclass (it forces the add past the
struct flag), and Hydra itself suggests `+optimizer.lrr=1` when `optimizer.lrr=1` fails: the key would then be
carried along and silently ignored. So every dataclass-typed node may hold only its dataclass's fields;
free-form mappings (`deepspeed.config`, `optimizer.scheduler_kwargs`, `optimizer.part_lr_scale`,
`freeze.parts`, ...: typed `dict` in schema.py) are the groups that opt in to new keys.

Light: omegaconf and the standard library only (runs for `--cfg job`).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from internvl_exp.config.schema import Config
from internvl_exp.redact import credential_kind, pattern_problems

# Top-level keys that are not task config: Hydra's own node (present while Hydra runs the job).
NOT_TASK_KEYS = ("hydra",)


def _unknown(node: DictConfig, path: str) -> list[str]:
    problems: list[str] = []
    kind = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(kind):
        fields = [f.name for f in dataclasses.fields(kind)]
        for key in node.keys():
            if str(key) in fields or (not path and key in NOT_TASK_KEYS):
                continue
            where = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean {f'{path}.' if path else ''}{close[0]}? " if close else ""
            problems.append(
                f"{where}: not a key of {path or 'the top level'}; {hint}its keys are {', '.join(fields)} "
                "(`+key=value` only adds keys to free-form mappings such as deepspeed.config)"
            )
    for key in node.keys():
        if not path and key in NOT_TASK_KEYS:
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            problems += _unknown(child, f"{path}.{key}" if path else str(key))
    return problems


def unknown_key_problems(cfg: Config) -> list[str]:
    """One line per key that no schema dataclass defines where it sits (e.g. `+optimizer.lrr=1`)."""
    return _unknown(cfg, "") if isinstance(cfg, DictConfig) else []


def _strings(value: Any, path: str):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def _task_container(cfg: Any) -> Any:
    """The resolved config without Hydra's node (which resolves only inside a running job)."""
    if not isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, ListConfig) else cfg
    out: dict[str, Any] = {}
    for key in cfg.keys():
        if key not in NOT_TASK_KEYS:
            value = cfg[key]
            out[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def secret_problems(cfg: Config) -> list[str]:
    """A credential-shaped value anywhere in the (resolved) config, and unusable `secrets` patterns.

    The message never repeats the value (it is printed and may be logged)."""
    try:
        task = _task_container(cfg)
    except Exception as e:  # an interpolation that does not resolve (e.g. ${oc.env:UNSET})
        return [f"config does not resolve: {str(e).splitlines()[0]}"]
    problems = [
        f"{key}: looks like {kind}; a credential must not be in a config or an override (it would be saved with "
        "the run): pass it through an environment variable instead (e.g. export HF_TOKEN=..., WANDB_API_KEY=...), "
        "which the libraries read themselves and the framework scrubs from everything it writes"
        for key, value in _strings(task, "")
        if (kind := credential_kind(value))
    ]
    patterns = task.get("secrets") if isinstance(task, dict) else None
    if patterns is not None and not isinstance(patterns, list):
        problems.append("secrets: must be a list of regular expressions, e.g. secrets=['acct-[0-9]{8}']")
    elif patterns:
        problems += pattern_problems(patterns)
    return problems
