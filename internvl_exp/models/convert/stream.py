"""Running a plan shard by shard: peak memory is one output shard plus the tensors of one rule.

Rules run in the order of the last source shard they need, so source shards are visited once, in order. A rule
whose sources span shards (a fused tensor whose parts sit in different files) reads the earlier parts through
handles kept open until their last use. A shard's memory map is closed as soon as no later rule needs it, so the
mapped pages of finished shards do not pile up in the process's resident memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from internvl_exp.models.convert.plan import Plan, Rule
from internvl_exp.models.convert.source import ConversionError, SourceCheckpoint
from internvl_exp.models.convert.writer import ShardWriter


@dataclass
class StreamResult:
    reads: Counter = field(default_factory=Counter)  # source key -> times read (verified == 1)
    target_dtypes: dict[str, str] = field(default_factory=dict)  # target -> dtype of its sources (torch name)
    shards_written: int = 0
    bytes_written: int = 0


class _Handles:
    """Open safetensors files by shard index, closed explicitly when no longer needed."""

    def __init__(self, src: SourceCheckpoint) -> None:
        self.src = src
        self._open: dict[int, object] = {}

    def get(self, i: int):
        from safetensors import safe_open

        if i not in self._open:
            ctx = safe_open(str(self.src.shards[i]), framework="pt")
            self._open[i] = (ctx, ctx.__enter__())
        return self._open[i][1]

    def close(self, i: int) -> None:
        if i in self._open:
            ctx, _ = self._open.pop(i)
            ctx.__exit__(None, None, None)

    def close_all(self) -> None:
        for i in list(self._open):
            self.close(i)


def _run_rule(rule: Rule, src: SourceCheckpoint, handles: _Handles, writer: ShardWriter, result: StreamResult) -> None:
    inputs = []
    for key in rule.sources:
        inputs.append(handles.get(src.tensors[key].shard).get_tensor(key))
        result.reads[key] += 1
    dtypes = {t.dtype for t in inputs}
    outputs = rule.build(inputs)
    del inputs
    if len(outputs) != len(rule.targets):
        raise AssertionError(f"rule {rule.why!r} built {len(outputs)} tensors for {len(rule.targets)} targets")
    for name, tensor in zip(rule.targets, outputs):
        if {tensor.dtype} != dtypes:
            raise ConversionError(f"{name}: built as {tensor.dtype} from {sorted(map(str, dtypes))} ({rule.why})")
        result.target_dtypes[name] = str(tensor.dtype).removeprefix("torch.")
        writer.add(name, tensor)


def run_plan(src: SourceCheckpoint, plan: Plan, writer: ShardWriter, progress=None) -> StreamResult:
    result = StreamResult()
    by_last_shard: dict[int, list[Rule]] = {}
    last_use: dict[int, int] = {}  # shard -> the last shard step whose rules read from it
    for rule in plan.rules:
        shards = {src.tensors[s].shard for s in rule.sources}
        step = max(shards)
        by_last_shard.setdefault(step, []).append(rule)
        for s in shards:
            last_use[s] = max(last_use.get(s, 0), step)
    handles = _Handles(src)
    try:
        for step in range(len(src.shards)):
            for rule in by_last_shard.get(step, []):
                _run_rule(rule, src, handles, writer, result)
                if progress is not None:
                    progress.update(len(rule.sources))
            for s in [s for s, last in last_use.items() if last <= step]:
                handles.close(s)
                del last_use[s]
    finally:
        handles.close_all()
    written = writer.finish()
    result.shards_written = len(written)
    result.bytes_written = writer.total_bytes
    return result
