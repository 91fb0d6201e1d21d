"""Reading InternVL's meta JSON + jsonl annotations, and `repeat_time` sampling.

Meta JSON: {"<name>": {"root", "annotation", "data_augment", "max_dynamic_patch", "repeat_time", "length",
"weight"}} (`weight` is ours: a share in a weighted mixture; `length` is informational, as in InternVL).
Relative `annotation`/`root` paths resolve against the meta JSON's folder when they exist there, else
against the working directory (InternVL's scripts use the working directory).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from internvl_exp.data.mixture import repeat_count, take
from internvl_exp.errors import UserError


class DataConfigError(UserError):
    """A problem with the data configuration or files (the message names the file/key and the fix)."""


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    annotation: Path
    root: Path
    repeat_time: float = 1.0
    data_augment: bool = False
    max_dynamic_patch: int | None = None
    weight: float | None = None  # share in a weighted mixture (see mixture.py)


@dataclass(frozen=True)
class RawLine:
    """One annotation line: where it came from, and its text."""

    dataset: str
    path: Path
    line_no: int  # 1-based
    text: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line_no}"


def _resolve(path: str, base: Path | None) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute() or base is None:
        return p
    if (base / p).exists() or not p.exists():
        return base / p
    return p


def _entry(name: str, spec: Mapping[str, Any], base: Path | None, where: str) -> DatasetEntry:
    known = {"root", "annotation", "data_augment", "max_dynamic_patch", "repeat_time", "length", "weight"}
    unknown = set(spec) - known
    if unknown:
        raise DataConfigError(f"{where}: dataset {name!r} has unknown key(s) {sorted(unknown)}; known keys: {sorted(known)}")
    if not spec.get("annotation"):
        raise DataConfigError(f"{where}: dataset {name!r} needs an 'annotation' (a .jsonl file)")
    annotation = _resolve(str(spec["annotation"]), base)
    if annotation.suffix != ".jsonl":
        raise DataConfigError(f"{where}: dataset {name!r}: annotation {annotation} must be a .jsonl file")
    if not annotation.exists():
        raise DataConfigError(f"{where}: dataset {name!r}: annotation file {annotation} does not exist")
    def number(key: str, cast, default, ok, rule: str):
        value = spec.get(key)
        if value is None:
            return default
        try:
            if isinstance(value, bool):
                raise TypeError
            out = cast(value)
        except (TypeError, ValueError):
            raise DataConfigError(f"{where}: dataset {name!r}: {key} must be a number {rule}, got {value!r}") from None
        if not ok(out):
            raise DataConfigError(f"{where}: dataset {name!r}: {key} must be {rule}, got {value!r}")
        return out

    augment = spec.get("data_augment", False)
    if not isinstance(augment, bool) and augment is not None:
        raise DataConfigError(f"{where}: dataset {name!r}: data_augment must be true or false, got {augment!r}")
    return DatasetEntry(
        name=name,
        annotation=annotation,
        root=_resolve(str(spec.get("root") or "."), base),
        repeat_time=number("repeat_time", float, 1.0, lambda v: v > 0, "> 0"),
        data_augment=bool(augment),
        max_dynamic_patch=number("max_dynamic_patch", int, None, lambda v: v >= 1, ">= 1"),
        weight=number("weight", float, None, lambda v: v >= 0, ">= 0"),
    )


def load_entries(meta_path: str | None, inline: Mapping[str, Mapping[str, Any]] | None = None,
                 key: str = "data") -> list[DatasetEntry]:
    """Datasets from a meta JSON and/or inline specs (inline wins on a name clash), in order. `key`: the config
    node they come from (data, or data.eval), as error messages name it."""
    specs: dict[str, tuple[Mapping[str, Any], Path | None, str]] = {}
    if meta_path:
        mp = Path(meta_path).expanduser()
        if not mp.exists():
            raise DataConfigError(f"{key}.meta_path: {mp} does not exist")
        try:
            meta = json.loads(mp.read_text())
        except json.JSONDecodeError as e:
            raise DataConfigError(f"{mp}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(meta, dict):
            raise DataConfigError(f"{mp}: the meta JSON must be an object of datasets")
        for name, spec in meta.items():
            if not isinstance(spec, dict):
                raise DataConfigError(f"{mp}: dataset {name!r} must be an object")
            specs[name] = (spec, mp.parent, str(mp))
    for name, spec in (inline or {}).items():
        specs[name] = (dict(spec), None, f"{key}.datasets.{name}")
    if not specs:
        raise DataConfigError(f"no datasets: set {key}.meta_path or {key}.datasets")
    return [_entry(name, spec, base, where) for name, (spec, base, where) in specs.items()]


def apply_repeat_time(items: list, repeat_time: float, rng: random.Random) -> list:
    """Whole copies for the integer part, plus a seeded random subset for the fraction (never a prefix)."""
    return take(items, repeat_count(len(items), repeat_time), rng)
