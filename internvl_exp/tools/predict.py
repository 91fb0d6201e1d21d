"""Batch prediction over an InternVL-format dataset, with exact and relaxed-match scores.

    python -m internvl_exp.tools.predict outputs/default/<run_name> data=demo_eval --out preds.jsonl
    python -m internvl_exp.tools.predict RUN_DIR data.meta_path=/data/val_meta.json data.generate_demo=false

Each sample's last assistant (gpt) turn is the reference answer; the conversation before it is the prompt
(rendered with the model's saved chat template, images tiled by its saved processor). The data is read through
the same pre-flight scan as training (data.on_error / data.length_policy apply), composed from the same
overrides as launch.py, with the run's own model settings (RUN_DIR/config.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from internvl_exp.errors import UserError
from internvl_exp.inference.generate import Sampling, generate, open_images, split_prompt
from internvl_exp.inference.load import load_for_inference
from internvl_exp.inference.scoring import exact_match, relaxed_match, scores
from internvl_exp.launch.precheck import compose_config
from internvl_exp.outputs import write_json_atomic

EPILOG = """\
output (--out, one JSON object per line): id, dataset, where (file:line), question (the last user turn),
reference, prediction, images (paths), exact, relaxed. The scores (exact_match, relaxed_match: lowercase,
punctuation and articles a/an/the removed) are printed and written next to it as <out>.scores.json.
Feeding the file to VLMEvalKit or lmms-eval: docs/inference.md.

examples:
  python -m internvl_exp.tools.predict outputs/default/demo data=demo_eval
  python -m internvl_exp.tools.predict outputs/default/demo data=demo_eval --batch-size 16 --limit 32 --out p.jsonl
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m internvl_exp.tools.predict",
        description="Generate an answer for every sample of a dataset with a trained run (or a model directory / "
                    "preset) and score it against the sample's last answer (exact and relaxed match).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="RUN_DIR_OR_MODEL", help="run directory, model directory or preset name")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the data, as for launch.py (data=demo_eval, data.meta_path=...)")
    p.add_argument("--out", type=Path, default=Path("preds.jsonl"), help="predictions file (default preds.jsonl)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per generate call (default 8)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N samples")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    return p.parse_intermixed_args(argv)


def compose_for(loaded: Any, overrides: Sequence[str]):
    """The data config of `overrides`, with the run's model settings (template, tiling) when it has them."""
    from omegaconf import OmegaConf

    cfg = compose_config(list(overrides))
    model = loaded.run_config.get("model")
    if model:
        cfg.model = OmegaConf.merge(cfg.model, model)
    if loaded.template:
        cfg.model.template = loaded.template
    return cfg


def samples(dataset: Any, limit: int | None) -> Iterator[Any]:
    """Every planned sample once, in file order (no repeats, no shuffling)."""
    n = len(dataset.plan)
    for row in range(n if limit is None else min(limit, n)):
        yield dataset.sample_of_row(row)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    try:
        return _predict(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from internvl_exp.data.from_config import build_from_config

    loaded = load_for_inference(args.target, args.device, args.dtype)
    print(f"loaded {loaded.source} (template {loaded.template})", file=sys.stderr)
    cfg = compose_for(loaded, args.overrides)
    dataset, _ = build_from_config(cfg, loaded.processor.tokenizer, cfg.resolved.tokens_per_tile)
    todo = list(samples(dataset, args.limit))
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pairs = []
    with open(args.out, "w") as f, tqdm(total=len(todo), desc="predict", unit="sample") as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            prompts, refs = zip(*(split_prompt(s.conversations) for s in batch))
            images = [open_images(s.images) for s in batch]
            preds = generate(loaded, prompts, images, sampling)
            for s, msgs, ref, pred in zip(batch, prompts, refs, preds):
                record = json.loads(s.line.text)
                f.write(json.dumps({
                    "id": record.get("id", s.line.where), "dataset": s.entry.name, "where": s.line.where,
                    "question": msgs[-1]["content"], "reference": ref, "prediction": pred,
                    "images": [str(p) for p in s.images],
                    "exact": exact_match(pred, ref), "relaxed": relaxed_match(pred, ref),
                }) + "\n")
                pairs.append((pred, ref))
            bar.update(len(batch))
    result = {"target": loaded.source, "predictions": str(args.out), **scores(pairs)}
    write_json_atomic(args.out.with_name(args.out.name + ".scores.json"), result)
    print(f"{result['samples']} samples: exact_match {result['exact_match']:.3f}, "
          f"relaxed_match {result['relaxed_match']:.3f} -> {args.out}")
    return 0


if __name__ == "__main__":
    from internvl_exp.shutdown import skip_final_collection

    skip_final_collection()
    sys.exit(main())
