"""Export a trained run (or a native checkpoint) for other tools, in OpenGVLab's original layout or the native one.

    python -m internvl_exp.tools.export outputs/<experiment>/<run_name> --layout original --out exported/
    python -m internvl_exp.tools.export RUN_DIR --layout native --out DIR
    python -m internvl_exp.tools.export NATIVE_MODEL_DIR --layout original --out DIR --template internvl2_5

--layout original writes what OpenGVLab's remote code loads (VLMEvalKit, InternVL's own eval and chat scripts,
LMDeploy/vLLM's InternVLChatModel support): an InternVLChatConfig config.json, weights under the original names
(vision_model.*, mlp1.*, language_model.* with the LLM's own names, InternLM2's fused wqkv), the tokenizer and
generation_config, and the remote-code .py files copied from the original checkpoint the run started from.
Weights are streamed one shard at a time; the result is checked to convert back to the same tensors.
--layout native copies final/ as it is (it loads with AutoModelForImageTextToText). A LoRA run is merged first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from internvl_exp.config.resolve import run_config
from internvl_exp.errors import UserError
from internvl_exp.models.convert import convert_checkpoint, ensure_converted, is_original_layout
from internvl_exp.models.convert.export import export_original, find_source
from internvl_exp.models.resolve import resolve_weights
from internvl_exp.outputs import BASE_SUBDIR, base_model_dir
from internvl_exp.tools.merge_lora import merge

LAYOUTS = ("original", "native")
FAMILY_NAMES = ("internlm2", "qwen2", "qwen3", "qwen3_moe", "gpt_oss", "phi3", "llama")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m internvl_exp.tools.export",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", type=Path, help="a run directory (holds final/) or a native checkpoint directory")
    p.add_argument("--layout", choices=LAYOUTS, required=True, help="original: OpenGVLab remote-code layout; "
                   "native: transformers' InternVLForConditionalGeneration layout")
    p.add_argument("--out", type=Path, required=True, help="output directory (created; must be new or empty)")
    p.add_argument("--source", type=Path, default=None, help="the original checkpoint the model was trained from "
                   "(default: the run's model.path, or the conversion record); gives tokenizer and remote code")
    p.add_argument("--template", default=None, help="conversation template for config.json (default: the run's "
                   "model.template, else the saved chat template's)")
    p.add_argument("--llm-family", choices=FAMILY_NAMES, default=None,
                   help="original LLM family when it cannot be told (a native llama text model: internlm2 or llama)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown only on a terminal anyway)")
    return p.parse_args(argv)


def _original_dir(path: Any) -> Path | None:
    return Path(path) if path and Path(path).is_dir() and is_original_layout(Path(path)) else None


def _run_source(cfg: dict[str, Any]) -> Path | None:
    """The original checkpoint a run trained from: its model.path, or where the preset's weights are found on
    this machine (the same offline lookup the run made), when that copy is in the original layout."""
    model_cfg = cfg.get("model") or {}
    if model_cfg.get("path"):
        return _original_dir(model_cfg["path"])
    if not model_cfg or model_cfg.get("random_init"):
        return None
    from omegaconf import OmegaConf

    try:
        weights = resolve_weights(OmegaConf.create(cfg))
    except (UserError, AttributeError, KeyError, IndexError):
        return None  # the weights are not on this machine (any more): the export goes on without a source
    return weights.path if weights is not None and weights.layout == "original" else None


def _lora_base(final: Path, cfg: dict[str, Any]) -> Path:
    """The native base a LoRA adapter merges into: final/base, the adapter's recorded base, or the run's
    model.path (converted once, through the conversion cache, when it is an original checkpoint)."""
    import json

    if (final / BASE_SUBDIR / "config.json").is_file():
        return final / BASE_SUBDIR
    recorded = json.loads((final / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if recorded and (Path(recorded) / "config.json").is_file() and not _original_dir(recorded):
        return Path(recorded)  # the native directory the run loaded (record_base_model)
    try:
        base = Path(base_model_dir(final, cfg))
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    if _original_dir(base):
        cache = (cfg.get("paths") or {}).get("cache_dir")
        if not cache:
            raise UserError(f"{base}: an original-layout LoRA base is converted through the run's paths.cache_dir, "
                            "which its config.yaml does not give; convert it (tools.convert) and merge with "
                            "tools.merge_lora --base")
        return Path(ensure_converted(base, Path(cache)))
    return base


def _copy_native(native: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(native.iterdir()):
        if f.is_file() and f.name not in ("training_args.bin", "adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(f, out / f.name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    try:
        return _export(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _export(args: argparse.Namespace) -> int:
    path: Path = args.path
    if args.out.exists() and any(args.out.iterdir()):
        raise UserError(f"{args.out}: already exists and is not empty; choose a new output directory")
    if not path.is_dir():
        raise UserError(f"{path}: no such directory (expected a run directory or a checkpoint directory)")
    if _original_dir(path):
        if args.layout == "original":
            raise UserError(f"{path}: already in the original layout (model_type internvl_chat); nothing to export")
        report = convert_checkpoint(path, args.out, show_progress=not args.no_progress)
        print(f"converted {path} -> {args.out} (native layout, {report.target_tensors} tensors)")
        return 0
    is_run = (path / "final").is_dir()
    cfg = run_config(path) if is_run else {}
    native = path / "final" if is_run else path
    if not (native / "config.json").is_file() and not (native / "adapter_config.json").is_file():
        raise UserError(f"{native}: holds no saved model (config.json); did the run finish with trainer.save_final?")
    model_cfg = cfg.get("model") or {}
    source = args.source or _run_source(cfg)
    template = args.template or model_cfg.get("template")
    with tempfile.TemporaryDirectory(dir=args.out.parent if args.out.parent.is_dir() else None,
                                     prefix=".export-merge-") as scratch:
        if (native / "adapter_config.json").is_file():
            base = _lora_base(native, cfg)
            source = source or find_source(base)
            print(f"merging the LoRA adapter in {native} into {base} first")
            native = merge(native, str(base), Path(scratch) / "merged")
        if args.layout == "native":
            _copy_native(native, args.out)
            print(f"copied {native} -> {args.out} (native layout)")
            return 0
        report = export_original(native, args.out, source=source, template=template, llm_family=args.llm_family,
                                 show_progress=not args.no_progress)
    print(f"exported {path} ({report.family} LLM, template {report.template}, {report.dtype}) -> {args.out}: "
          f"{report.tensors} tensors in {report.shards_written} shard(s), original layout, checked to convert back")
    print(f"tokenizer: {report.tokenizer}")
    if report.remote_code:
        print(f"remote code copied from {report.source_checkpoint}: {', '.join(report.remote_code)}")
    elif report.remote_code_note:
        print(f"note: {report.remote_code_note}")
    return 0


if __name__ == "__main__":
    from internvl_exp.shutdown import skip_final_collection

    skip_final_collection()
    sys.exit(main())
