"""Running a plan shard by shard: peak memory is one output shard plus the tensors of one rule.

Rules run in the order of the last source shard they need, so each source shard is visited once in order; a rule
whose sources span shards (a fused tensor split across files) reads the earlier parts through their still-open,
memory-mapped handles, which costs no RAM until the tensor is read.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field

from internvl_exp.models.convert.plan import Plan
from internvl_exp.models.convert.source import ConversionError, SourceCheckpoint
from internvl_exp.models.convert.writer import ShardWriter


@dataclass
class StreamResult:
    reads: Counter = field(default_factory=Counter)  # source key -> times read (verified == 1)
    target_dtypes: dict[str, str] = field(default_factory=dict)  # target -> dtype of its sources (torch name)
    shards_written: int = 0
    bytes_written: int = 0


def run_plan(src: SourceCheckpoint, plan: Plan, writer: ShardWriter, progress=None) -> StreamResult:
    from safetensors import safe_open

    result = StreamResult()
    by_last_shard: dict[int, list] = {}
    for rule in plan.rules:
        last = max(src.tensors[s].shard for s in rule.sources)
        by_last_shard.setdefault(last, []).append(rule)
    with ExitStack() as stack:
        handles: dict[int, object] = {}

        def handle(i: int):
            if i not in handles:
                handles[i] = stack.enter_context(safe_open(str(src.shards[i]), framework="pt"))
            return handles[i]

        for shard in range(len(src.shards)):
            for rule in by_last_shard.get(shard, []):
                inputs = []
                for key in rule.sources:
                    inputs.append(handle(src.tensors[key].shard).get_tensor(key))
                    result.reads[key] += 1
                dtypes = {str(t.dtype) for t in inputs}
                outputs = rule.build(inputs)
                del inputs
                if len(outputs) != len(rule.targets):
                    raise AssertionError(f"rule {rule.why} built {len(outputs)} tensors for {len(rule.targets)} targets")
                for name, tensor in zip(rule.targets, outputs):
                    if {str(tensor.dtype)} != dtypes:
                        raise ConversionError(f"{name}: built as {tensor.dtype} from {sorted(dtypes)} ({rule.why})")
                    result.target_dtypes[name] = str(tensor.dtype).removeprefix("torch.")
                    writer.add(name, tensor)
                if progress is not None:
                    progress.update(len(rule.sources))
    written = writer.finish()
    result.shards_written = len(written)
    result.bytes_written = writer.total_bytes
    return result
