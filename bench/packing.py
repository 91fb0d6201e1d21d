"""Real-token fraction per batch: padded, length-grouped and packed, on the demo mix and a long-tail mix.

    python bench/packing.py                 # print the table
    python bench/packing.py --write-docs    # and update the "## Packing" section of docs/benchmarks.md

Only the plan's lengths and tiles are used (what the packer itself sees), so this costs no model time.
- padded: shuffled batches of B samples, each padded to its longest: real / (B x longest).
- length-grouped: the same with HF's LengthGroupedSampler order (data.group_by_length).
- packed: data/packing.py's rule; a pack is one flattened row (no padding at all), so the number shown is
  how full the fixed budget is: real / (packs x max_packed_tokens), the share of the memory a step is sized
  for that does real work.
Long-tail mix: 20,000 generated samples, text tokens log-normal (median 180, sigma 1.1), 0-12 tiles of 256
tokens (40% text-only), capped at max_seq_length 8192; B 8, max_packed_tokens 8192, 48 tiles, buffer 1000.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from internvl_exp.data.packing import pack_rows  # noqa: E402


def padded_fraction(lengths: np.ndarray, order: np.ndarray, batch: int) -> float:
    real = pad = 0
    for i in range(0, len(order), batch):
        b = lengths[order[i:i + batch]]
        real += int(b.sum())
        pad += len(b) * int(b.max())
    return real / pad


def grouped_order(lengths: np.ndarray, batch: int, seed: int) -> np.ndarray:
    from transformers.trainer_pt_utils import get_length_grouped_indices

    g = torch.Generator().manual_seed(seed)
    return np.asarray(get_length_grouped_indices(lengths.tolist(), batch, generator=g))


def packed_fraction(lengths: np.ndarray, tiles: np.ndarray, order: np.ndarray, max_tokens: int, max_tiles: int,
                    buffer: int) -> tuple[float, int]:
    packs = pack_rows(lengths[order], tiles[order], max_tokens, max_tiles, buffer)
    return float(lengths.sum()) / (len(packs) * max_tokens), len(packs)


def measure(name: str, lengths: np.ndarray, tiles: np.ndarray, batch: int, max_tokens: int, max_tiles: int,
            buffer: int) -> dict:
    order = np.random.default_rng(0).permutation(len(lengths))
    packed, n_packs = packed_fraction(lengths, tiles, order, max_tokens, max_tiles, buffer)
    return {"name": name, "samples": len(lengths), "batch": batch, "max_tokens": max_tokens,
            "padded": padded_fraction(lengths, order, batch),
            "grouped": padded_fraction(lengths, grouped_order(lengths, batch, 0), batch),
            "packed": packed, "packs": n_packs, "median": int(np.median(lengths)), "max": int(lengths.max())}


def demo_mix() -> tuple[np.ndarray, np.ndarray]:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import compose

    from internvl_exp.data.demo import generate_demo_data
    from internvl_exp.data.from_config import build_from_config
    from internvl_exp.data.packing import sample_tiles
    from internvl_exp.models.loading import load_tokenizer

    tmp = Path(tempfile.mkdtemp())
    generate_demo_data(tmp / "demo")
    cfg = compose(["data=mix", "data.plan_cache=false"], tmp, tmp / "demo")
    ds, _ = build_from_config(cfg, load_tokenizer(cfg.model, None), 16)
    rows = ds.epoch_order()
    return np.asarray(ds.plan.rows["length"])[rows].astype(np.int64), sample_tiles(ds.plan)[rows]


def long_tail(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    text = np.exp(rng.normal(np.log(180), 1.1, n)).astype(np.int64) + 20
    tiles = np.where(rng.random(n) < 0.4, 0, rng.integers(1, 13, n))
    return np.minimum(text + 256 * tiles, 8192), tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    rows = [measure("demo mix (data=mix)", *demo_mix(), batch=4, max_tokens=512, max_tiles=48, buffer=1000),
            measure("long tail (generated)", *long_tail(), batch=8, max_tokens=8192, max_tiles=48, buffer=1000)]
    table = "\n".join(
        f"| {r['name']} | {r['samples']:,} | {r['median']} / {r['max']} | {r['batch']} | {100 * r['padded']:.1f}% | "
        f"{100 * r['grouped']:.1f}% | {r['max_tokens']} | {100 * r['packed']:.1f}% ({r['packs']:,} packs) |" for r in rows)
    cmd = "python bench/packing.py --write-docs" + (f" --note {args.note!r}" if args.note else "")
    section = f"""## Packing

Real tokens per batch position, from the plan's lengths and tiles (`bench/packing.py`). Padded and
length-grouped: batches of B samples padded to their longest (grouped: HF's `LengthGroupedSampler` order,
`data.group_by_length`). Packed (`data.packing`): first-fit decreasing over windows of 1000 samples, 48 tiles
per pack; a pack is one flattened row with no padding, so the number is how full the `max_packed_tokens`
budget is (the memory a step is sized for). Long tail: 20,000 generated samples, text log-normal (median 180
tokens, sigma 1.1) plus 0-12 tiles of 256 tokens (40% text-only), capped at 8192.

| mix | samples | median / max tokens | B | padded | length-grouped | max_packed_tokens | packed |
|---|---|---|---|---|---|---|---|
{table}

**Machine**: {platform.machine()}, {os.cpu_count()} CPU cores, {args.note + " " if args.note else ""}{time.strftime("%Y-%m-%d")}. Python
{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} (no model runs: lengths only).
"""
    from docs_section import publish

    publish(section, args.write_docs, cmd)


if __name__ == "__main__":
    main()
