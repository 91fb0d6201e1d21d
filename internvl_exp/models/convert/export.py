"""export_original: a native InternVLForConditionalGeneration directory -> OpenGVLab's original layout.

The output loads with OpenGVLab's remote code (InternVLChatModel: vision_model.*, mlp1.*, language_model.* under
the LLM's own names, InternLM2's fused wqkv), as VLMEvalKit and InternVL's own scripts load it.
Order of work, as in the conversion: read the native config and shard headers; derive every original name by
running the conversion's key tables backwards (models/convert/invert.py); build the forward plan on those names
and check it gives back exactly the native names; invert every rule (renames, qkv joins, InternLM2's grouped
wqkv, stacked experts) and stream the weights shard by shard; then check the result converts back: the written
directory is read as an original checkpoint and planned against the native config, names and shapes, without
reading a weight. Everything goes to a temporary sibling renamed onto `dst` at the end.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from internvl_exp.models.convert.checkpoint import _progress, build_plan
from internvl_exp.models.convert.config_map import map_config, source_dtype
from internvl_exp.models.convert.export_config import original_config, overlay_on_source
from internvl_exp.models.convert.llm_keys import (
    FAMILIES,
    NATIVE_DECODER,
    NATIVE_HEAD,
    Family,
    TextDims,
    family_of,
    original_llm_keys,
)
from internvl_exp.models.convert.plan import Plan, Rule, identity
from internvl_exp.models.convert.source import (
    ConversionError,
    SourceCheckpoint,
    TensorInfo,
    is_original_layout,
    open_source,
    read_config,
    read_header,
    shard_files,
)
from internvl_exp.models.convert.stream import run_plan
from internvl_exp.models.convert.tokenizer import VIDEO_TOKEN, load_source_tokenizer
from internvl_exp.models.convert.verify import check_coverage, check_targets
from internvl_exp.models.convert.vision_keys import (
    NATIVE_PROJECTOR,
    NATIVE_VISION,
    original_projector_key,
    original_vision_key,
    projector_rules,
    vision_rules,
)
from internvl_exp.models.convert.writer import ShardWriter
from internvl_exp.outputs import write_json_atomic

log = logging.getLogger(__name__)

EXPORT_REPORT = "export.json"
MAX_OUTPUT_SHARD_BYTES = 4 * 1024**3
NATIVE_MODEL_TYPE = "internvl"
# Tokenizer files of an original release (InternLM2: tokenizer.model + its remote tokenizer code; Qwen/Llama/
# Phi: tokenizer.json, vocab/merges); all of them are copied when the run started from that release.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.txt")
# An OpenGVLab release of each LLM family (model-zoo.md) whose remote-code .py files fit an export that did not
# start from an original checkpoint: the files are the same across sizes of one family.
RELEASE_FOR_CODE = {"internlm2": "OpenGVLab/InternVL2_5-8B", "qwen2": "OpenGVLab/InternVL2_5-1B",
                    "qwen3": "OpenGVLab/InternVL3_5-1B", "qwen3_moe": "OpenGVLab/InternVL3_5-30B-A3B",
                    "gpt_oss": "OpenGVLab/InternVL3_5-GPT-OSS-20B-A4B-Preview", "phi3": "OpenGVLab/InternVL2-4B",
                    "llama": "OpenGVLab/InternVL2-Llama3-76B"}
_TEMPLATE_LINE = re.compile(r"^\{#- (\S+): the prompt text")


@dataclass
class ExportReport:
    src: str
    dst: str
    family: str
    source_checkpoint: str | None  # the original checkpoint the run started from, when known
    template: str
    dtype: str
    tensors: int
    shards_written: int
    bytes_written: int
    tokenizer: str  # where the tokenizer files came from
    remote_code: list[str] = field(default_factory=list)  # .py files copied from the source
    remote_code_note: str | None = None  # what to do when they could not be copied
    config_changed: list[str] = field(default_factory=list)  # source config fields updated from the trained model


def find_source(native_dir: Path) -> Path | None:
    """The original checkpoint `native_dir` was converted from, from the conversion cache's record."""
    record = Path(native_dir) / "conversion.json"
    if record.is_file():
        src = Path(json.loads(record.read_text()).get("src", ""))
        if src.is_dir() and is_original_layout(src):
            return src
    return None


def open_native(path: Path) -> SourceCheckpoint:
    """Config + tensor directory (name -> shard, shape, dtype) of a native checkpoint, from headers only."""
    config = read_config(path)
    if config.get("model_type") != NATIVE_MODEL_TYPE:
        raise ConversionError(f"{path / 'config.json'}: model_type is {config.get('model_type')!r}, not "
                              f"{NATIVE_MODEL_TYPE!r}; export takes a native InternVL checkpoint (a run's final/)")
    src = SourceCheckpoint(path=path, config=config, shards=shard_files(path))
    for i, shard in enumerate(src.shards):
        for name, info in read_header(shard)[1].items():
            if name != "__metadata__":
                src.tensors[name] = TensorInfo(shard=i, shape=tuple(info["shape"]), dtype=info["dtype"])
    return src


def export_family(native: dict[str, Any], source_config: dict | None, llm_family: str | None, where: Path) -> Family:
    """The original LLM family: the source's, else --llm-family, else the one native model_type names (a native
    `llama` is InternLM2 or Llama, which only the source or the user can tell)."""
    if source_config is not None:
        fam = family_of(source_config["llm_config"])
        if fam is not None:
            return fam
    if llm_family is not None:
        fam = next((f for f in FAMILIES if f.name == llm_family), None)
        if fam is None:
            raise ConversionError(f"--llm-family {llm_family!r}: not one of {', '.join(f.name for f in FAMILIES)}")
        if fam.native_model_type != native["text_config"]["model_type"]:
            raise ConversionError(f"--llm-family {llm_family}: converts to native {fam.native_model_type!r}, but "
                                  f"{where} holds a {native['text_config']['model_type']!r} text model")
        return fam
    mtype = native["text_config"].get("model_type")
    matches = [f for f in FAMILIES if f.native_model_type == mtype]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConversionError(f"{where / 'config.json'}: text model {mtype!r} has no original InternVL layout "
                              f"(supported: {', '.join(sorted({f.native_model_type for f in FAMILIES}))})")
    raise ConversionError(f"{where / 'config.json'}: a native {mtype!r} text model is either "
                          f"{' or '.join(f.name for f in matches)} in the original layout; pass --llm-family "
                          "(InternVL2/2.5 2B, 8B, 26B are internlm2) or --source ORIGINAL_CHECKPOINT")


def text_dims(text: dict[str, Any]) -> TextDims:
    heads = int(text["num_attention_heads"])
    kv = int(text.get("num_key_value_heads") or heads)
    return TextDims(heads, kv, int(text.get("head_dim") or text["hidden_size"] // heads))


def original_names(native: SourceCheckpoint, family: Family) -> dict[str, list[str]]:
    """native key -> the original key(s) it comes from; a key no table produces is an error naming it."""
    out, unknown = {}, []
    for key, info in native.tensors.items():
        if key.startswith(NATIVE_VISION):
            names = [original_vision_key(key)]
        elif key.startswith(NATIVE_PROJECTOR):
            names = [original_projector_key(key)]
        elif key.startswith(NATIVE_DECODER) or key == NATIVE_HEAD:
            names = original_llm_keys(family, key, info.shape)
        else:
            names = []
        if not names or None in names:
            unknown.append(key)
        out[key] = names
    if unknown:
        raise ConversionError(f"{native.path}: {len(unknown)} tensor(s) have no name in the original layout: "
                              f"{', '.join(sorted(unknown)[:5])}; the model has modules InternVLChatModel does not")
    return out


def inverse_plan(native: SourceCheckpoint, family: Family) -> Plan:
    """The conversion's rules for the derived original names, checked to give back exactly the native keys,
    each turned around (targets -> sources, by its inverse build)."""
    names = sorted({n for ns in original_names(native, family).values() for n in ns})
    vis_hidden = int(native.config["vision_config"]["hidden_size"])
    forward = vision_rules([k for k in names if k.startswith("vision_model.")], vis_hidden)
    forward += projector_rules([k for k in names if k.startswith("mlp1.")])
    forward += family.rules([k for k in names if k.startswith("language_model.")], text_dims(native.config["text_config"]))
    produced = [t for r in forward for t in r.targets]
    used = {s for r in forward for s in r.sources}
    if sorted(produced) != sorted(native.tensors) or used != set(names):
        missing = set(native.tensors) - set(produced)
        extra = set(produced) - set(native.tensors)
        raise ConversionError(f"{native.path}: the key tables do not run backwards for this model (not given back: "
                              f"{sorted(missing)[:3]}; extra: {sorted(extra)[:3]}; unplanned: "
                              f"{sorted(set(names) - used)[:3]}); converter bug")
    rules = [Rule(r.targets, r.sources, r.inverse or identity, f"inverse of {r.why}") for r in forward]
    return Plan(rules=rules, dropped={})


def _processor_settings(native_dir: Path) -> dict[str, Any]:
    """min/max patches and the chat template name from the saved processor (either file layout)."""
    settings: dict[str, Any] = {}
    for name in ("processor_config.json", "preprocessor_config.json"):
        f = native_dir / name
        if f.is_file():
            data = json.loads(f.read_text())
            ip = data.get("image_processor", data)
            if "max_patches" in ip:
                settings.setdefault("min_patches", int(ip.get("min_patches", 1)))
                settings.setdefault("max_patches", int(ip["max_patches"]) if ip.get("crop_to_patches", True) else 1)
    jinja = native_dir / "chat_template.jinja"
    if jinja.is_file():
        m = _TEMPLATE_LINE.match(jinja.read_text().lstrip())
        if m:
            settings["template"] = m.group(1)
    return settings


def _same_vocab(source: Path, native_dir: Path) -> bool:
    from transformers import PreTrainedTokenizerFast

    theirs = load_source_tokenizer(source).get_vocab()
    ours = PreTrainedTokenizerFast.from_pretrained(str(native_dir)).get_vocab()
    theirs.pop(VIDEO_TOKEN, None)
    ours.pop(VIDEO_TOKEN, None)
    return theirs == ours


def _native_tokenizer_back(native_dir: Path, dst: Path, vocab_size: int) -> None:
    """The native tokenizer.json with a tokenizer_config transformers 4 reads (PreTrainedTokenizerFast), without
    the <video> placeholder the conversion appended past the embedding table."""
    tok = json.loads((native_dir / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok.get("added_tokens", [])
                           if not (t["content"] == VIDEO_TOKEN and t["id"] >= vocab_size)]
    (dst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=2) + "\n")
    cfg = json.loads((native_dir / "tokenizer_config.json").read_text())
    specials = [t for t in (cfg.get("extra_special_tokens") or cfg.get("additional_special_tokens") or [])
                if isinstance(t, str) and t != VIDEO_TOKEN]
    out = {"tokenizer_class": "PreTrainedTokenizerFast", "additional_special_tokens": specials}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length", "add_bos_token",
                "add_eos_token", "clean_up_tokenization_spaces"):
        if key in cfg:
            out[key] = cfg[key]
    (dst / "tokenizer_config.json").write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n")
    (dst / "special_tokens_map.json").write_text(json.dumps(
        {k: v for k, v in out.items() if k.endswith("_token") or k == "additional_special_tokens"}, indent=2) + "\n")


def check_converts_back(dst: Path, native: SourceCheckpoint) -> None:
    """The export, read as an original checkpoint, plans onto exactly the native model's tensors (names, shapes)."""
    from transformers import InternVLConfig

    exported = open_source(dst)
    mapped = map_config(exported, int(native.config["image_token_id"]))
    expected = {k: (v.shape, None) for k, v in native.tensors.items()}
    plan = build_plan(exported, mapped)
    check_coverage(exported, plan)
    check_targets(exported, plan, expected)
    config = InternVLConfig(**mapped.native)
    for section in ("text_config", "vision_config"):
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                    "num_key_value_heads", "head_dim"):
            ours = native.config[section].get(key)
            back = getattr(getattr(config, section), key, None)
            if ours is not None and back != ours:
                raise ConversionError(f"{dst / 'config.json'}: converts back with {section}.{key}={back}, "
                                      f"the model has {ours} (export bug)")


def export_original(native_dir: Path, dst: Path, *, source: Path | None = None, template: str | None = None,
                    llm_family: str | None = None, show_progress: bool = True) -> ExportReport:
    """Write the native checkpoint `native_dir` to `dst` (new or empty) in OpenGVLab's original layout.
    `source`: the original checkpoint it was trained from (default: the conversion record's), which gives the
    config's wording, the tokenizer files and the remote code."""
    native_dir, dst = Path(native_dir), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise ConversionError(f"{dst}: already exists and is not empty; choose a new output directory")
    native = open_native(native_dir)
    source = Path(source) if source is not None else find_source(native_dir)
    source_config = None
    if source is not None:
        source_config = read_config(source)
        if source_config.get("model_type") != "internvl_chat":
            raise ConversionError(f"{source / 'config.json'}: --source must be an original (internvl_chat) checkpoint")
    family = export_family(native.config, source_config, llm_family, native_dir)
    settings = _processor_settings(native_dir)
    template = template or settings.get("template") or (source_config or {}).get("template")
    if not template:
        raise ConversionError(f"{native_dir}: no conversation template found (no chat_template.jinja of ours, no "
                              "source checkpoint); pass --template NAME (internvl2_5, internlm2-chat, Hermes-2, phi3-chat)")
    plan = inverse_plan(native, family)

    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        largest = max(p.stat().st_size for p in native.shards)
        writer = ShardWriter(tmp, max_shard_bytes=min(largest, MAX_OUTPUT_SHARD_BYTES))
        with _progress(sum(len(r.sources) for r in plan.rules), show_progress) as bar:
            bar.set_description("exporting")
            streamed = run_plan(native, plan, writer, bar)
        dtype = native.config.get("dtype") or source_dtype(native)
        built = original_config({**native.config, "dtype": native.config.get("dtype") or dtype}, family,
                                template=template, min_dynamic_patch=settings.get("min_patches", 1),
                                max_dynamic_patch=settings.get("max_patches", 12))
        changed: list[str] = []
        config = built
        if source_config is not None:
            config, changed = overlay_on_source(built, source_config)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")

        remote, note = [], None
        if source is not None and _same_vocab(source, native_dir):
            for name in TOKENIZER_FILES:
                if (source / name).is_file():
                    shutil.copy2(source / name, tmp / name)
            tokenizer_from = f"copied from {source}"
        else:
            _native_tokenizer_back(native_dir, tmp, int(native.config["text_config"]["vocab_size"]))
            tokenizer_from = "the trained model's tokenizer.json (PreTrainedTokenizerFast)"
        gen = (source / "generation_config.json") if source is not None else None
        gen = gen if gen is not None and gen.is_file() else native_dir / "generation_config.json"
        if gen.is_file():
            shutil.copy2(gen, tmp / "generation_config.json")
        if source is not None:
            for py in sorted(source.glob("*.py")):
                shutil.copy2(py, tmp / py.name)
                remote.append(py.name)
        if not remote:
            release = RELEASE_FOR_CODE[family.name]
            where = f"the source {source} has none; " if source is not None else ""
            note = (f"{where}copy OpenGVLab's remote-code files (configuration_*.py, modeling_*.py, conversation.py"
                    f"{', tokenization_internlm2*.py' if family.name == 'internlm2' else ''}) into {dst} from the "
                    f"release the model was fine-tuned from (one with this LLM: {release}); config.json's "
                    "auto_map names them")
        check_converts_back(tmp, native)
        report = ExportReport(
            src=str(native_dir), dst=str(dst), family=family.name,
            source_checkpoint=str(source) if source is not None else None, template=template,
            dtype=str(config.get("torch_dtype") or dtype), tensors=len(streamed.target_dtypes),
            shards_written=streamed.shards_written, bytes_written=streamed.bytes_written,
            tokenizer=tokenizer_from, remote_code=remote, remote_code_note=note, config_changed=changed,
        )
        write_json_atomic(tmp / EXPORT_REPORT, asdict(report))
        if dst.exists():
            dst.rmdir()
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (%s) -> %s: %d tensors in %d shard(s)", native_dir, family.name, dst, report.tensors,
             report.shards_written)
    return report
