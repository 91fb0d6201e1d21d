"""Checks of a conversion: the plan covers every source tensor exactly once (before reading weights), and the
written files hold exactly the tensors the native config expects, with the expected shapes and the source dtype."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from internvl_exp.models.convert.plan import Plan
from internvl_exp.models.convert.source import SAFETENSORS_DTYPES, ConversionError, SourceCheckpoint, read_header
from internvl_exp.models.convert.writer import INDEX_NAME


def _names(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_coverage(src: SourceCheckpoint, plan: Plan) -> None:
    """Every source key in exactly one rule (or deliberately dropped); every target written once."""
    uses = Counter(s for r in plan.rules for s in r.sources) + Counter(list(plan.dropped))
    unused = set(src.tensors) - set(uses)
    if unused:
        quantised = any(k.endswith(("_blocks", "_scales", ".qweight", ".scales")) for k in unused)
        why = ("they look quantised (MXFP4/AWQ/GPTQ): convert the unquantised bfloat16 release" if quantised else
               "the checkpoint has weights this converter does not know (a different architecture or extra modules)")
        raise ConversionError(f"{src.path}: {len(unused)} source tensor(s) would not be converted: {_names(unused)}; {why}")
    twice = [k for k, n in uses.items() if n > 1]
    if twice:
        raise ConversionError(f"{src.path}: source tensor(s) used by more than one rule: {_names(twice)} (converter bug)")
    unknown = set(uses) - set(src.tensors)
    if unknown:
        raise ConversionError(f"{src.path}: the plan names tensor(s) not in the checkpoint: {_names(unknown)}")
    targets = Counter(plan.target_names())
    dup = [t for t, n in targets.items() if n > 1]
    if dup:
        raise ConversionError(f"{src.path}: target tensor(s) written twice: {_names(dup)} (converter bug)")


def check_reads(src: SourceCheckpoint, plan: Plan, reads: Counter) -> None:
    """After streaming: each source tensor that is converted was read exactly once."""
    expected = Counter(s for r in plan.rules for s in r.sources)
    wrong = [k for k in set(expected) | set(reads) if reads[k] != expected[k]]
    if wrong:
        raise ConversionError(f"{src.path}: source tensor(s) read {[reads[k] for k in sorted(wrong)[:5]]} times: {_names(wrong)}")


def expected_tensors(config: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of what `from_pretrained` reads for `config`, built on the meta device (no memory).
    Tied parameters are stored once, under their first name, as save_pretrained does."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    seen: dict[int, str] = {}
    out = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        # meta tensors have no storage; tied ones are the same Parameter object
        if id(tensor) in seen:
            continue
        seen[id(tensor)] = name
        out[name] = (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
    return out


def written_tensors(dst: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) as stored in dst's shards (read back from the file headers, not from memory)."""
    index = json.loads((dst / INDEX_NAME).read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        _, header = read_header(dst / shard)
        for name, info in header.items():
            if name != "__metadata__":
                out[name] = (tuple(info["shape"]), SAFETENSORS_DTYPES[info["dtype"]])
                if index["weight_map"].get(name) != shard:
                    raise ConversionError(f"{dst / INDEX_NAME}: {name} is in {shard} but indexed elsewhere")
    return out


def check_written(dst: Path, expected: dict[str, tuple[tuple[int, ...], str]], source_dtypes: dict[str, str]) -> None:
    """Every expected key present with its shape, nothing extra, and each tensor in its source's dtype."""
    got = written_tensors(dst)
    missing = set(expected) - set(got)
    extra = set(got) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing {_names(missing)}")
    if extra:
        problems.append(f"not in the native model {_names(extra)}")
    shapes = [f"{k} {got[k][0]} (expected {expected[k][0]})" for k in sorted(set(got) & set(expected)) if got[k][0] != expected[k][0]]
    if shapes:
        problems.append(f"wrong shape {_names(shapes, 3)}")
    dtypes = [f"{k} {got[k][1]} (source {source_dtypes[k]})" for k in sorted(got) if k in source_dtypes and got[k][1] != source_dtypes[k]]
    if dtypes:
        problems.append(f"dtype changed {_names(dtypes, 3)}")
    if problems:
        raise ConversionError(f"{dst}: the converted weights do not match the native config: {'; '.join(problems)}")


def check_targets(src: SourceCheckpoint, plan: Plan, expected: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Before any weight is read: the targets are exactly the native keys, and plain renames have the right shape."""
    targets = set(plan.target_names())
    unknown = targets - set(expected)
    if unknown:
        raise ConversionError(f"{src.path}: tensors would map to key(s) the native model does not have: {_names(unknown)}")
    missing = set(expected) - targets
    if missing:
        raise ConversionError(
            f"{src.path}: the checkpoint has no source tensor for native key(s) {_names(missing)}; "
            "a shard is missing or incomplete, or config.json does not match the weights"
        )
    bad = [
        f"{r.sources[0]} {src.tensors[r.sources[0]].shape} (native {r.targets[0]} is {expected[r.targets[0]][0]})"
        for r in plan.rules
        if len(r.sources) == 1 and len(r.targets) == 1 and src.tensors[r.sources[0]].shape != expected[r.targets[0]][0]
    ]
    if bad:
        raise ConversionError(f"{src.path / 'config.json'}: the config does not match the weights: {_names(bad, 3)}")
