"""Chat with a trained run, a model directory or a preset, prompted exactly as training did.

    python -m internvl_exp.tools.chat outputs/default/<run_name> --image cat.png "What is in the picture?"
    python -m internvl_exp.tools.chat outputs/default/<run_name>          # interactive
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from internvl_exp.errors import UserError
from internvl_exp.inference.generate import MissingImageError, Sampling, generate, open_images, user_turn
from internvl_exp.inference.load import load_for_inference

EPILOG = """\
RUN_DIR_OR_MODEL is one of:
  a run directory        outputs/<experiment>/<run_name> (loads its final/: full fine-tune or LoRA adapter)
  a model directory      a run's final/, a merged LoRA (tools.merge_lora), a native or original-layout checkpoint
  a preset name          internvl2_5_8b, ... (its weights found on this machine as a run finds them)
The chat template and image tiling saved with the model are the training run's (model.template,
model.min/max_dynamic_patch). A LoRA run loads its base from disk (final/base or the recorded path); nothing is
downloaded (HF_HUB_OFFLINE=1 unless you set it).

interactive commands:
  /image PATH   attach an image to the next message (repeat for several)
  /reset        forget the conversation
  /quit         leave (also Ctrl-D)

examples (after `python launch.py run_name=demo`, whose demo images are under .cache/internvl_exp/demo_data):
  python -m internvl_exp.tools.chat outputs/default/demo --image .cache/internvl_exp/demo_data/eval/images/shapes_000.png "What colour is the shape?"
  python -m internvl_exp.tools.chat outputs/default/demo --temperature 0.7 --top-p 0.9
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m internvl_exp.tools.chat",
        description="Chat with a trained run or a model: one answer when PROMPT is given, an interactive "
                    "multi-turn chat otherwise. Greedy by default; answers stream to the terminal.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="RUN_DIR_OR_MODEL", help="run directory, model directory or preset name")
    p.add_argument("prompt", nargs="?", default=None, help="one-shot prompt (omit for interactive mode)")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="image for the (first) message; repeat for several, or write <image> in the prompt where each goes")
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling (default 1.0)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="dtype to load the weights in (default: as saved)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")
    return p.parse_intermixed_args(argv)  # the prompt may come after the options


def _streamer(tokenizer):
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _answer(loaded, history, images, sampling) -> str:
    return generate(loaded, [history], [images], sampling, streamer=_streamer(loaded.processor.tokenizer))[0]


def interactive(loaded, sampling, first_images) -> None:
    history: list[dict] = []
    images: list = []  # every image of the conversation, in order (the processor takes them all each turn)
    pending: list = list(first_images)
    print("interactive chat: /image PATH attaches an image to the next message, /reset, /quit", file=sys.stderr)
    while True:
        try:
            line = input("user> ").strip()
        except EOFError:
            print()
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            history, images, pending = [], [], []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                pending += open_images([path])
            except MissingImageError as e:
                print(f"error: {e}", file=sys.stderr)
                continue
            print(f"(image attached to the next message: {path})", file=sys.stderr)
            continue
        try:
            turn = user_turn(line, len(pending))
        except MissingImageError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        history.append(turn)
        images += pending
        pending = []
        print("assistant> ", end="", flush=True)
        history.append({"role": "assistant", "content": _answer(loaded, history, images, sampling)})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything chat loads is on this machine

    try:
        images = open_images(args.image)
        loaded = load_for_inference(args.target, args.device, args.dtype)
        sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p)
        from transformers import set_seed

        set_seed(args.seed)
        print(f"loaded {loaded.source} (template {loaded.template})", file=sys.stderr)
        if args.prompt is None:
            interactive(loaded, sampling, images)
            return 0
        _answer(loaded, [user_turn(args.prompt, len(images))], images, sampling)
        print()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from internvl_exp.shutdown import skip_final_collection

    skip_final_collection()
    sys.exit(main())
