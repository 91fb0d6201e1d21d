"""Merge a LoRA run into a plain HF checkpoint (plus its processor and tokenizer).

    python -m internvl_exp.tools.merge_lora outputs/<experiment>/<run_name> --out merged/
    python -m internvl_exp.tools.merge_lora RUN_DIR --out DIR --base /path/to/base --dtype bfloat16

Reads RUN_DIR/final/ (adapter_model.safetensors + adapter_config.json + processor, as the run saved them),
loads the base model (RUN_DIR/final/base/ when the run saved it, else the run's model.path, else the adapter's
base_model_name_or_path; or --base), applies the adapter, merges it (merge_and_unload) and writes DIR, which
loads with AutoModelForImageTextToText.from_pretrained / AutoProcessor.from_pretrained. Offline, one process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from internvl_exp.config.resolve import run_config
from internvl_exp.models.processor import from_pretrained_dir
from internvl_exp.outputs import base_model_dir

DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m internvl_exp.tools.merge_lora", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="the run directory (holds final/ with the adapter)")
    p.add_argument("--out", type=Path, required=True, help="where to write the merged checkpoint")
    p.add_argument("--base", default=None, help="base model directory (default: found from the run)")
    p.add_argument("--adapter", type=Path, default=None, help="adapter directory (default: RUN_DIR/final)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="dtype to load and save (default: the base's)")
    return p.parse_args(argv)


def merge(adapter_dir: Path, base_dir: str, out_dir: Path, dtype: str | None = None) -> Path:
    """Base + adapter -> merged plain model in out_dir, with the processor saved beside it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    base = AutoModelForImageTextToText.from_pretrained(base_dir, **kwargs)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    from_pretrained_dir(adapter_dir).save_pretrained(str(out_dir))  # the training pixels' backend, as recorded
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    adapter_dir = args.adapter or args.run_dir / "final"
    if not (adapter_dir / "adapter_config.json").exists():
        print(
            f"error: {adapter_dir} holds no LoRA adapter (adapter_config.json); merge_lora needs a run trained with "
            "a lora freeze option (freeze=lora_llm / lora_all); a full fine-tune's final/ already loads as is",
            file=sys.stderr,
        )
        return 2
    try:
        base = args.base or base_model_dir(adapter_dir, run_config(args.run_dir))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = merge(adapter_dir, base, args.out, args.dtype)
    print(f"merged {adapter_dir} into {base} -> {out}")
    return 0


if __name__ == "__main__":
    from internvl_exp.shutdown import skip_final_collection

    skip_final_collection()
    sys.exit(main())
