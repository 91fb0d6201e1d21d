"""convert_checkpoint: an original OpenGVLab InternVL directory -> a native InternVLForConditionalGeneration one.

Order of work: read config.json + headers and the tokenizer; map the config; build the expected native tensors on
the meta device; plan every tensor and check the plan (coverage, names, shapes) before reading any weight; stream
the weights shard by shard; read the written headers back and check them; write tokenizer, processor and
generation config. Everything goes to a temporary sibling directory renamed onto `dst` only at the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from internvl_exp.models.convert.config_map import MappedConfig, map_config
from internvl_exp.models.convert.generation import write_generation_config
from internvl_exp.models.convert.llm_keys import LLM_PREFIX, NATIVE_HEAD
from internvl_exp.models.convert.plan import Plan
from internvl_exp.models.convert.processor import write_processor
from internvl_exp.models.convert.source import ConversionError, SourceCheckpoint, open_source
from internvl_exp.models.convert.stream import run_plan
from internvl_exp.models.convert.tokenizer import image_token_id, load_source_tokenizer
from internvl_exp.models.convert.verify import (
    check_coverage,
    check_reads,
    check_targets,
    check_written,
    expected_tensors,
)
from internvl_exp.models.convert.vision_keys import PROJECTOR_PREFIX, VISION_PREFIX, projector_rules, vision_rules
from internvl_exp.models.convert.writer import ShardWriter
from internvl_exp.outputs import write_json_atomic

log = logging.getLogger(__name__)

REPORT_NAME = "conversion.json"
MAX_OUTPUT_SHARD_BYTES = 4 * 1024**3


@dataclass
class ConversionReport:
    src: str
    dst: str
    family: str
    native_text_model_type: str
    dtype: str
    source_tensors: int
    target_tensors: int
    dropped: dict[str, str]
    shards_written: int
    bytes_written: int
    tie_word_embeddings: bool
    image_token_id: int
    eos_token_id: list[int]
    template: str | None


def build_plan(src: SourceCheckpoint, mapped: MappedConfig) -> Plan:
    keys = sorted(src.tensors)
    rules = vision_rules([k for k in keys if k.startswith(VISION_PREFIX)], int(src.config["vision_config"]["hidden_size"]))
    rules += projector_rules([k for k in keys if k.startswith(PROJECTOR_PREFIX)])
    rules += mapped.family.rules([k for k in keys if k.startswith(LLM_PREFIX)], mapped.text_dims)
    dropped = {}
    for key in keys:
        if key.endswith("rotary_emb.inv_freq"):
            # A buffer some older saves include; transformers recomputes it from the rope settings in the config.
            dropped[key] = "rotary inverse frequencies, recomputed from the config"
    if mapped.tie_word_embeddings:
        # A tied head is the embedding matrix itself: transformers stores it once, so a stored copy is not written.
        for rule in [r for r in rules if r.targets == (NATIVE_HEAD,)]:
            rules.remove(rule)
            dropped[rule.sources[0]] = "lm_head tied to the input embeddings (tie_word_embeddings)"
    return Plan(rules=rules, dropped=dropped)


def _progress(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tensor", desc="converting", disable=not (show and sys.stderr.isatty()))


def _native_config(mapped: MappedConfig, src: SourceCheckpoint):
    from transformers import InternVLConfig

    try:
        config = InternVLConfig(**mapped.native)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{src.path / 'config.json'}: does not map to a valid native config: {e}") from None
    config.architectures = ["InternVLForConditionalGeneration"]
    return config


def convert_checkpoint(src: Path, dst: Path, *, show_progress: bool = True) -> ConversionReport:
    """Convert the original checkpoint `src` into the native directory `dst` (must not exist yet)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise ConversionError(f"{dst}: already exists and is not empty; choose a new output directory")
    source = open_source(src)
    tokenizer = load_source_tokenizer(src)
    mapped = map_config(source, image_token_id(tokenizer))
    config = _native_config(mapped, source)
    expected = expected_tensors(config)
    plan = build_plan(source, mapped)
    check_coverage(source, plan)
    check_targets(source, plan, expected)

    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        writer = ShardWriter(tmp, max_shard_bytes=min(source.largest_shard_bytes, MAX_OUTPUT_SHARD_BYTES))
        with _progress(sum(len(r.sources) for r in plan.rules), show_progress) as bar:
            streamed = run_plan(source, plan, writer, bar)
        check_reads(source, plan, streamed.reads)
        check_written(tmp, expected, streamed.target_dtypes)
        config.save_pretrained(str(tmp))
        write_processor(
            tmp,
            tokenizer,
            image_size=mapped.image_size,
            min_dynamic_patch=mapped.min_dynamic_patch,
            max_dynamic_patch=mapped.max_dynamic_patch,
            image_seq_length=mapped.image_seq_length,
            template=mapped.template,
        )
        eos = write_generation_config(tmp, src, mapped.family, tokenizer, mapped.native["text_config"])
        report = ConversionReport(
            src=str(src),
            dst=str(dst),
            family=mapped.family.name,
            native_text_model_type=mapped.family.native_model_type,
            dtype=mapped.native["dtype"],
            source_tensors=len(source.tensors),
            target_tensors=len(streamed.target_dtypes),
            dropped=plan.dropped,
            shards_written=streamed.shards_written,
            bytes_written=streamed.bytes_written,
            tie_word_embeddings=mapped.tie_word_embeddings,
            image_token_id=image_token_id(tokenizer),
            eos_token_id=eos,
            template=mapped.template,
        )
        write_json_atomic(tmp / REPORT_NAME, asdict(report))
        if dst.exists():
            dst.rmdir()  # empty, checked above
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s (%s) -> %s: %d tensors in %d shard(s)", src, mapped.family.name, dst,
             report.target_tensors, report.shards_written)
    return report
