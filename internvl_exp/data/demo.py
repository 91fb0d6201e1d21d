"""Deterministic demo data in InternVL's own format: a meta JSON, jsonl annotations and real PNG files.

Four datasets whose answers are learnable from the pixels (or the text):
  shapes    single image, one coloured shape: "What colour is the shape?" / "What shape is it?"
  counting  single image, 1-4 shapes: "How many shapes are there?"
  compare   two images: "Which image has more shapes?"
  text      text only: "What number comes after 3?"

Generated once into a directory (written to a temporary sibling and renamed, so concurrent jobs of a
sweep never see a half-written set).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw

DEMO_VERSION = 4  # 2: adds the eval split (eval/); 3: the larger training split (large/); 4: its weights
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# Canvas sizes with different aspect ratios, so dynamic tiling picks different grids.
CANVAS_SIZES = ((64, 64), (128, 64), (64, 128), (96, 96), (128, 128), (192, 64))
SAMPLES_PER_DATASET = 48
# The eval split (eval/meta.json, data=demo_eval): fresh draws of the same four tasks, never in training.
EVAL_SAMPLES_PER_DATASET = 16
EVAL_SUBDIR = "eval"
# The larger training split (large/meta.json, data=demo_large; what `make demo` trains on): the same draws as
# the main split extended to more samples per task (its first SAMPLES_PER_DATASET lines are the main split's),
# enough for the tiny model to read colours from the pixels instead of memorising 48 images per task.
LARGE_SAMPLES_PER_DATASET = 400
LARGE_SUBDIR = "large"
# Mixture weights of the larger split (meta.json `weight`): the pixel tasks get most of each epoch, since the
# text task is learned in a few steps and an even mix leaves too few colour questions to read from the pixels.
LARGE_WEIGHTS = {"shapes": 4, "counting": 2, "compare": 1, "text": 1}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _canvas(rng: random.Random) -> Image.Image:
    w, h = rng.choice(CANVAS_SIZES)
    return Image.new("RGB", (w, h), (245, 245, 245))


def _place(rng: random.Random, img: Image.Image, n: int) -> list[tuple[int, int, int, int]]:
    """n non-overlapping boxes on a coarse grid of the canvas."""
    w, h = img.size
    cell = min(w, h) // 2
    cells = [(cx, cy) for cx in range(w // cell) for cy in range(h // cell)]
    rng.shuffle(cells)
    boxes = []
    for cx, cy in cells[:n]:
        pad = max(2, cell // 6)
        boxes.append((cx * cell + pad, cy * cell + pad, (cx + 1) * cell - pad, (cy + 1) * cell - pad))
    return boxes


def _shapes_image(rng: random.Random, n: int, colour: str | None = None, shape: str | None = None):
    img = _canvas(rng)
    while len(_place(rng, img, n)) < n:  # canvas too small for n shapes: take a bigger one
        img = Image.new("RGB", (128, 128), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    for box in _place(rng, img, n):
        _draw_shape(draw, shape or rng.choice(SHAPES), box, COLOURS[colour or rng.choice(list(COLOURS))])
    return img


def _conv(*turns: str) -> list[dict]:
    roles = ("human", "gpt")
    return [{"from": roles[i % 2], "value": t} for i, t in enumerate(turns)]


def _gen_shapes(rng: random.Random, out: Path, n_samples: int = SAMPLES_PER_DATASET) -> Iterator[dict]:
    for i in range(n_samples):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        img = _shapes_image(rng, 1, colour, shape)
        rel = f"images/shapes_{i:03d}.png"
        img.save(out / rel)
        turns = ["<image>\nWhat colour is the shape?", colour.capitalize() + "."]
        if i % 2:
            turns += ["What shape is it?", f"A {shape}."]
        yield {"id": f"shapes-{i}", "image": rel, "width": img.width, "height": img.height, "conversations": _conv(*turns)}


def _gen_counting(rng: random.Random, out: Path, n_samples: int = SAMPLES_PER_DATASET) -> Iterator[dict]:
    for i in range(n_samples):
        n = rng.randint(1, 4)
        img = _shapes_image(rng, n)
        rel = f"images/counting_{i:03d}.png"
        img.save(out / rel)
        conv = _conv("<image>\nHow many shapes are there?", f"{NUMBER_WORDS[n].capitalize()}.")
        yield {"id": f"counting-{i}", "image": rel, "width": img.width, "height": img.height, "conversations": conv}


def _gen_compare(rng: random.Random, out: Path, n_samples: int = SAMPLES_PER_DATASET) -> Iterator[dict]:
    for i in range(n_samples):
        a, b = rng.sample(range(1, 5), 2)
        rels = []
        for j, n in enumerate((a, b)):
            rel = f"images/compare_{i:03d}_{j}.png"
            _shapes_image(rng, n).save(out / rel)
            rels.append(rel)
        answer = "The first." if a > b else "The second."
        conv = _conv("Image-1: <image>\nImage-2: <image>\nWhich image has more shapes?", answer)
        yield {"id": f"compare-{i}", "image": rels, "conversations": conv}


def _gen_text(rng: random.Random, out: Path, n_samples: int = SAMPLES_PER_DATASET) -> Iterator[dict]:
    for i in range(n_samples):
        n = rng.randint(0, 9)
        turns = [f"What number comes after {n}?", f"{n + 1}."]
        if i % 3 == 0:
            turns += ["And before it?", f"{n - 1}." if n > 0 else "None."]
        yield {"id": f"text-{i}", "conversations": _conv(*turns)}


GENERATORS = {"shapes": _gen_shapes, "counting": _gen_counting, "compare": _gen_compare, "text": _gen_text}


def corpus_sentences() -> Iterator[str]:
    """Every prompt/answer form the demo uses (for the tiny tokenizer's BPE merges)."""
    yield "What colour is the shape?"
    yield "What shape is it?"
    yield "How many shapes are there?"
    yield "Which image has more shapes? The first. The second."
    yield "Image-1: Image-2:"
    for c in COLOURS:
        yield c.capitalize() + "."
    for s in SHAPES:
        yield f"A {s}."
    for w in NUMBER_WORDS:
        yield w.capitalize() + "."
    for n in range(11):
        yield f"What number comes after {n}? {n}. And before it? None."


def is_complete(directory: str | os.PathLike) -> bool:
    marker = Path(directory) / ".complete"
    return marker.exists() and marker.read_text().strip() == str(DEMO_VERSION)


def _write_split(out: Path, seed: int, tag: str, n_samples: int, weights: dict[str, float] | None = None) -> None:
    """One split (images/, one jsonl per task, meta.json) in `out`; `tag` keeps each split's draws distinct;
    `weights`: each task's mixture weight in meta.json."""
    (out / "images").mkdir(parents=True)
    meta = {}
    for name, gen in GENERATORS.items():
        rng = random.Random(f"{seed}-{tag}{name}")
        rows = list(gen(rng, out, n_samples))
        with open(out / f"{name}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        meta[name] = {"root": ".", "annotation": f"{name}.jsonl", "data_augment": False, "repeat_time": 1,
                      "length": len(rows)}
        if weights:
            meta[name]["weight"] = weights[name]
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def generate_demo_data(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Create the demo set in `directory` unless a complete copy of this version is already there."""
    target = Path(directory)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-tmp-", dir=target.parent))
    try:
        _write_split(tmp, seed, "", SAMPLES_PER_DATASET)
        _write_split(tmp / EVAL_SUBDIR, seed, "eval-", EVAL_SAMPLES_PER_DATASET)
        _write_split(tmp / LARGE_SUBDIR, seed, "", LARGE_SAMPLES_PER_DATASET, LARGE_WEIGHTS)
        (tmp / ".complete").write_text(str(DEMO_VERSION))
        try:
            if target.exists():  # stale or incomplete copy
                shutil.rmtree(target)
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):  # lost a race against a concurrent job: fine if theirs is complete
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
