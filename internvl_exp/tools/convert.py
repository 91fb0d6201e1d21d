"""Convert an original OpenGVLab InternVL checkpoint to transformers' native layout.

    python -m internvl_exp.tools.convert SRC DST

SRC is a checkpoint directory in OpenGVLab's original remote-code layout (config.json with model_type
"internvl_chat", safetensors with vision_model.* / mlp1.* / language_model.* keys), e.g. a download of
OpenGVLab/InternVL2-8B. DST (must not exist or be empty) receives a directory that loads with
AutoModelForImageTextToText.from_pretrained and AutoProcessor.from_pretrained, without remote code.
Supported: InternViT-300M and -6B; LLMs InternLM2 (-> Llama), Qwen2, Qwen3, Qwen3-MoE, GPT-OSS, Phi3, Llama.
Weights are streamed one source shard at a time (peak memory about one shard), and the result is verified
(every source tensor used once, every native tensor present with its shape, dtype unchanged) before DST appears.
Training runs do this automatically on first use (cached under paths.cache_dir/converted/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from internvl_exp.errors import UserError
from internvl_exp.models.convert import convert_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m internvl_exp.tools.convert",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", type=Path, help="original checkpoint directory (config.json model_type internvl_chat)")
    p.add_argument("dst", type=Path, help="output directory for the native checkpoint (created; must be new or empty)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is shown only on a terminal anyway)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after parsing so --help stays fast and torch-free.

    try:
        report = convert_checkpoint(args.src, args.dst, show_progress=not args.no_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"converted {report.src} ({report.family} LLM -> native {report.native_text_model_type}, {report.dtype}) "
        f"-> {report.dst}: {report.target_tensors} tensors, {report.shards_written} shard(s), verified"
    )
    return 0


if __name__ == "__main__":
    from internvl_exp.shutdown import skip_final_collection

    skip_final_collection()
    sys.exit(main())
