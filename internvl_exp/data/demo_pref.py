"""A generated preference demo (`data=demo_pref`): InternVL MPO-format pairs whose chosen answer is the right one.

Three datasets, in the SFT demo's words (so the tiny tokenizer has merges for them; data/demo.py):
  colour    single image, one coloured shape: "What colour is the shape?" chosen the true colour, rejected another
  counting  single image, 1-4 shapes: "How many shapes are there?" chosen the true count, rejected another
  text      text only: "What number comes after n?" chosen n+1, rejected another number

The chosen answer is learnable from the pixels (or the text), so a DPO/MPO run's eval reward accuracy rises above
chance. A held-out eval split (eval/, fresh draws) is written beside it. Generated once, atomically (a temporary
sibling renamed into place), under a file lock: every rank of a run asks for it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from internvl_exp.data.demo import COLOURS, NUMBER_WORDS, SHAPES, _shapes_image

PAIR_DEMO_VERSION = 2  # 2: 256 training pairs per dataset (64 did not lift eval reward accuracy in a minute)
TRAIN_PAIRS = 256  # per dataset
EVAL_PAIRS = 16
EVAL_SUBDIR = "eval"


def _other(rng: random.Random, options: list[str], right: str) -> str:
    return rng.choice([o for o in options if o != right])


def _colour(rng: random.Random, out: Path, n: int, tag: str) -> Iterator[dict]:
    names = [c.capitalize() + "." for c in COLOURS]
    for i in range(n):
        colour = rng.choice(list(COLOURS))
        rel = f"images/{tag}colour_{i:03d}.png"
        _shapes_image(rng, 1, colour, rng.choice(SHAPES)).save(out / rel)
        right = colour.capitalize() + "."
        yield {"image": rel, "question": "<image>\nWhat colour is the shape?", "chosen": right,
               "rejected": _other(rng, names, right)}


def _counting(rng: random.Random, out: Path, n: int, tag: str) -> Iterator[dict]:
    words = [NUMBER_WORDS[k].capitalize() + "." for k in range(1, 5)]
    for i in range(n):
        k = rng.randint(1, 4)
        rel = f"images/{tag}counting_{i:03d}.png"
        _shapes_image(rng, k).save(out / rel)
        right = words[k - 1]
        yield {"image": rel, "question": "How many shapes are there?", "chosen": right,
               "rejected": _other(rng, words, right)}


def _text(rng: random.Random, out: Path, n: int, tag: str) -> Iterator[dict]:
    for _ in range(n):
        k = rng.randint(0, 9)
        right = f"{k + 1}."
        yield {"question": f"What number comes after {k}?", "chosen": right,
               "rejected": _other(rng, [f"{j}." for j in range(11)], right)}


GENERATORS = {"colour": _colour, "counting": _counting, "text": _text}


def _write_split(out: Path, seed: int, tag: str, n: int) -> None:
    (out / "images").mkdir(parents=True)
    meta = {}
    for name, gen in GENERATORS.items():
        rng = random.Random(f"{seed}-pairs-{tag}{name}")
        with open(out / f"{name}.jsonl", "w") as f:
            for row in gen(rng, out, n, tag):
                f.write(json.dumps(row) + "\n")
        meta[name] = {"root": ".", "annotation": f"{name}.jsonl", "repeat_time": 1, "data_augment": False}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def is_complete(directory: str | os.PathLike) -> bool:
    marker = Path(directory) / ".complete"
    return marker.exists() and marker.read_text().strip() == str(PAIR_DEMO_VERSION)


def generate_pair_demo(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Create the pair demo (meta.json, eval/meta.json) in `directory` unless a complete copy is there. Every rank
    of a run calls this: one writes under a file lock while the others wait, then find it complete."""
    import fcntl

    target = Path(directory)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(target):  # written by another process while this one waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".demo-pref-tmp-", dir=target.parent))
        try:
            _write_split(tmp, seed, "", TRAIN_PAIRS)
            _write_split(tmp / EVAL_SUBDIR, seed, "eval-", EVAL_PAIRS)
            (tmp / ".complete").write_text(str(PAIR_DEMO_VERSION))
            if target.exists():  # stale or incomplete copy (no one reads it: it was never complete)
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
