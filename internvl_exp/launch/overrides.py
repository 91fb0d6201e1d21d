"""A mistyped key on the command line, named in one line with the suggestion, before Hydra composes.

Hydra's own message for `optimizer.lrr=1` is seven lines that advise `+optimizer.lrr=1`, which the schema then
refuses (config/strict.py), and for `fretze=vision` it lists neither the groups nor the close match. Each
override's key is walked here through the schema dataclasses (config/schema.py) and the config groups (the
folders of conf/): a key that is neither gets "did you mean ..." and the valid names. Anything this cannot
judge (`+`/`~` overrides, `hydra.*`, `group@package`, keys inside free-form mappings) is left to Hydra.

Light: hydra's override parser, dataclasses and the standard library (runs before --help/--cfg work).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

from internvl_exp.config.schema import Config


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field holds (unwrapping Optional[...]), else None (a scalar, list, dict or Any)."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _hint(name: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"did you mean {prefix}{close[0]}? " if close else ""


def key_problem(key: str, groups: list[str]) -> str | None:
    """Why `key` (an override's key, e.g. optimizer.lrr or fretze) names nothing in the config; None when it
    does or when the schema cannot tell (inside a free-form mapping)."""
    head, *rest = key.split(".")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if not rest:
        if head in fields or head in groups:
            return None
        top = sorted(set(fields) - set(groups))
        return (f"{head}: no config group or top-level key of that name; {_hint(head, sorted(set(groups) | set(fields)))}"
                f"the groups are {', '.join(groups)}; the top-level keys {', '.join(top)}")
    if head not in fields:
        if head in groups:  # a group that is no key (experiment=..., hparams_search=...): Hydra's to judge
            return None
        return f"{key}: {head} is not a config group or key; {_hint(head, sorted(fields))}the groups are {', '.join(groups)}"
    cls = _dataclass_of(typing.get_type_hints(Config)[head])
    path = head
    for part in rest:
        if cls is None:  # a free-form mapping, list or scalar: Hydra and the schema's types judge the rest
            return None
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            return f"{path}.{part}: not a key of {path}; {_hint(part, names, path + '.')}its keys are {', '.join(names)}"
        cls = _dataclass_of(typing.get_type_hints(cls)[part])
        path = f"{path}.{part}"
    return None


def config_groups(config_dir: Path) -> list[str]:
    return sorted(p.name for p in Path(config_dir).iterdir() if p.is_dir() and p.name != "hydra")


def override_problems(overrides: list[str], config_dir: Path) -> list[str]:
    """One line per command-line override whose key is not in the config (see the module doc)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:  # a syntax error: Hydra's own message says where
        return []
    groups = config_groups(config_dir)
    problems = []
    for o in parsed:
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or o.is_delete() or o.package is not None:
            continue
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or "/" in key:
            continue
        problem = key_problem(key, groups)
        if problem is not None:
            problems.append(f"{o.input_line}: {problem.split(': ', 1)[1]}" if "." not in key else problem)
    return problems
