"""What the demo learns: `tools.predict` on the demo's eval split for the trained demo run and the untrained model.

    python bench/demo_scores.py                  # train the demo recipe (what `make demo` runs), score both
    python bench/demo_scores.py --write-docs     # and update "## What the demo reaches" in docs/inference.md
    python bench/demo_scores.py -- trainer.max_steps=300 freeze=full   # another recipe (all launch.py overrides)

Scores are exact/relaxed match over the 64 eval samples (16 per task, never trained on), and per question
kind, against the chance level of each kind (a uniform guess among the answers the task uses). The untrained
model is the tiny preset's random init (`tools.predict tiny`). Costs one demo run plus two predictions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.docs_section import write_section  # noqa: E402

DOC = ROOT / "docs" / "inference.md"
# Question kind -> chance accuracy of a uniform guess among the task's answers (data/demo.py).
KINDS = {"colour": ("What colour is the shape?", 1 / 4), "shape": ("What shape is it?", 1 / 3),
         "count": ("How many shapes are there?", 1 / 4), "compare": ("Which image has more shapes?", 1 / 2),
         "text": ("What number comes after", 1 / 10), "before": ("And before it?", 1 / 10)}


def make_demo_args() -> list[str]:
    """The overrides `make demo` passes to launch.py (the Makefile's DEMO_ARGS: one place says what the demo is)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(l for l in text.splitlines() if l.startswith("DEMO_ARGS :="))
    return line.split(":=", 1)[1].split()


def kind_of(question: str) -> str:
    return next(k for k, (q, _) in KINDS.items() if q in question)


def per_kind(preds: Path) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line in preds.read_text().splitlines():
        r = json.loads(line)
        c = counts[kind_of(r["question"])]
        c[0] += bool(r["relaxed"])
        c[1] += 1
    return {k: (a, n) for k, (a, n) in counts.items()}


def predict(target: str, out: Path, demo_dir: Path, cache: Path) -> dict:
    cmd = [sys.executable, "-m", "internvl_exp.tools.predict", target, "data=demo_eval",
           f"paths.demo_data_dir={demo_dir}", f"paths.cache_dir={cache}", "--out", str(out), "--batch-size", "16"]
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    return {**json.loads(out.with_name(out.name + ".scores.json").read_text()), "kinds": per_kind(out)}


def section(overrides: list[str], trained: dict, untrained: dict, train_s: float, metrics: dict) -> str:
    command = "make demo" if overrides == make_demo_args() else " ".join(["python launch.py", *overrides])
    rows = []
    for kind, (_, chance) in KINDS.items():
        if kind in trained["kinds"]:
            (a, n), (b, _) = trained["kinds"][kind], untrained["kinds"].get(kind, (0, 0))
            rows.append(f"| {kind} | {n} | {chance:.2f} | {a}/{n} = {a / n:.2f} | {b}/{n} = {b / n:.2f} |")
    return "\n".join([
        "## What the demo reaches (measured once, CPU)",
        "",
        f"`tools.predict` on `data=demo_eval` (64 samples never trained on, greedy), after `{command}` "
        f"({metrics.get('steps')} steps, {train_s:.0f} s on this machine, final eval loss "
        f"{metrics.get('final_eval_loss', float('nan')):.3f}), against the untrained tiny model:",
        "",
        f"- trained: exact {trained['exact_match']:.3f}, relaxed {trained['relaxed_match']:.3f}",
        f"- untrained: exact {untrained['exact_match']:.3f}, relaxed {untrained['relaxed_match']:.3f}",
        "",
        "| question | samples | chance | trained | untrained |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Reproduce: `python bench/demo_scores.py --write-docs` (trains the demo into a temporary directory, then",
        "`python -m internvl_exp.tools.predict RUN data=demo_eval` and `... predict tiny data=demo_eval`).",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("overrides", nargs="*", help="launch.py overrides (after --)")
    args = p.parse_args()
    args.overrides = args.overrides or make_demo_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo, cache = tmp / "demo_data", tmp / "cache"
        started = time.time()
        subprocess.run([sys.executable, "launch.py", f"paths.output_dir={tmp}", f"paths.demo_data_dir={demo}",
                        f"paths.cache_dir={cache}", "run_name=demo", *args.overrides], cwd=ROOT, check=True,
                       capture_output=True)
        train_s = time.time() - started
        run = tmp / "default" / "demo"
        metrics = json.loads((run / "metrics.json").read_text())
        trained = predict(str(run), tmp / "trained.jsonl", demo, cache)
        untrained = predict("tiny", tmp / "untrained.jsonl", demo, cache)
    text = section(args.overrides, trained, untrained, train_s, metrics)
    print(text)
    if args.write_docs:
        write_section(DOC, text)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
