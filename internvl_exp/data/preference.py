"""Preference pairs in InternVL's MPO format: meta JSON + jsonl lines with image / question / chosen / rejected.

Each line becomes two SFT-style conversations (the question, then the chosen or the rejected answer) that go through
the same template, tiling and pixel code as supervised data (templates.py, tiling.py, images.py), so the token ids,
labels and pixels equal InternVL's own MPO dataset (tests/test_preference_data.py checks them against its output).

Differences from InternVL's MPO data path, on purpose (docs/preference.md):
- the batch's attention mask comes from the true lengths, not `input_ids != 0` (which hides every real token with
  id 0, e.g. `!` in Qwen2 vocabularies);
- no sequence is padded to max_seq_length (InternVL pads multi-image pairs only);
- a text-only pair has no pixels at all (InternVL encodes a blank 224x224 image and throws its features away);
- a pair longer than max_seq_length is dropped, never truncated (a cut answer would change what is compared);
- a bad line is an error naming `file:line` (or, under on_error=skip, counted), never silently replaced by a
  random other line; a placeholder count that does not match the images is an error, not literal text.

Memory at scale: the scan keeps only numpy arrays per line (offsets and lengths); lines are re-read by offset.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from internvl_exp.data.collator import pixel_values
from internvl_exp.data.image_header import HeaderCache
from internvl_exp.data.images import image_to_tiles_u8, load_rgb
from internvl_exp.data.mixture import epoch_indices, epoch_slots
from internvl_exp.data.plan import LineReader
from internvl_exp.data.planner import ImageSettings
from internvl_exp.data.preference_scan import cached_scan
from internvl_exp.data.report import LoadFailures
from internvl_exp.data.sources import DatasetEntry, RawLine
from internvl_exp.data.templates import IGNORE_INDEX, IMAGE_PLACEHOLDER, ConversationError, count_turns, tokenize_turns
from internvl_exp.data.tiling import choose_grid
from internvl_exp.errors import UserError

log = logging.getLogger(__name__)

SIDES = ("chosen", "rejected")
MAX_REPLACEMENTS = 100  # consecutive pairs tried under on_error=skip before giving up

# Why a preference line cannot be used (reports, docs/troubleshooting.md).
REASONS: dict[str, str] = {
    "invalid_json": "the line is not valid JSON, or not a JSON object",
    "bad_pair": "'question', 'chosen' or 'rejected' is missing or not a string, or an answer is empty",
    "bad_media_field": "'image' is not a path or a list of paths, or the line has a 'video' (not supported for pairs)",
    "image_count_mismatch": "the number of <image> placeholders in the question differs from the images given "
    "(or an answer contains <image>)",
    "missing_media": "an image does not exist",
    "corrupt_media": "an image cannot be opened or decoded",
    "too_long": "the chosen or the rejected sequence is longer than data.max_seq_length (pairs are never truncated)",
}


class PreferenceDataError(UserError):
    """Bad preference data under on_error=strict: every problem as `file:line: reason: detail`."""


class PairSkip(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class PreferenceLine:
    question: str  # `<image>` placeholders already present (prepended when the line had none)
    chosen: str
    rejected: str
    images: tuple[str, ...]  # as written in the line, relative to the dataset root

    def conversation(self, side: str) -> list[dict[str, str]]:
        return [{"from": "human", "value": self.question}, {"from": "gpt", "value": getattr(self, side)}]


def parse_line(text: str) -> PreferenceLine:
    """One jsonl line -> PreferenceLine, or PairSkip naming what is wrong."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise PairSkip("invalid_json", f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise PairSkip("invalid_json", "a line must be a JSON object")
    missing = [k for k in ("question", "chosen", "rejected") if not isinstance(obj.get(k), str)]
    if missing:
        hint = " (this looks like SFT data: a preference line has question/chosen/rejected)" if "conversations" in obj else ""
        raise PairSkip("bad_pair", f"{', '.join(repr(k) for k in missing)} missing or not a string{hint}")
    for side in SIDES:
        if not obj[side].strip():
            raise PairSkip("bad_pair", f"{side!r} is empty")
        if IMAGE_PLACEHOLDER in obj[side]:
            raise PairSkip("image_count_mismatch", f"the {side} answer contains {IMAGE_PLACEHOLDER}")
    if obj.get("video"):
        raise PairSkip("bad_media_field", "'video' preference pairs are not supported; use frames as a list of images")
    image = obj.get("image")
    images: list[str] = []
    if image:
        images = [image] if isinstance(image, str) else image
        if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
            raise PairSkip("bad_media_field", f"'image' must be a path or a list of paths, got {image!r}")
    question = obj["question"]
    n_ph = question.count(IMAGE_PLACEHOLDER)
    if images and n_ph == 0:
        # InternVL prepends the placeholder for a single image; for several it would fail, we prepend one each
        # (as for SFT lines, planner.py).
        question = (IMAGE_PLACEHOLDER + "\n") * len(images) + question
    elif n_ph != len(images):
        raise PairSkip("image_count_mismatch", f"{n_ph} {IMAGE_PLACEHOLDER} placeholder(s) in the question but "
                                               f"{len(images)} image(s)")
    return PreferenceLine(question, obj["chosen"], obj["rejected"], tuple(images))


@dataclass(frozen=True)
class PlannedPair:
    line: PreferenceLine
    images: tuple[Path, ...]
    tiles: tuple[int, ...]  # per image, thumbnail included
    per_image: int  # the tile budget of each image
    lengths: tuple[int, int]  # tokens of the chosen and the rejected sequence
    supervised: tuple[int, int]


class PreferenceEncoder:
    """Plans and loads preference lines with the SFT template, tiling and pixel code."""

    def __init__(self, tokenizer: Any, template: str, settings: ImageSettings, max_seq_length: int,
                 system_message: str | None = None, seed: int = 0):
        self.tokenizer, self.template, self.settings = tokenizer, template, settings
        self.max_seq_length, self.system_message, self.seed = max_seq_length, system_message, seed
        self._headers = HeaderCache()

    def plan(self, entry: DatasetEntry, text: str) -> PlannedPair:
        """Parse and measure a line (image headers only, no pixels); raises PairSkip."""
        line = parse_line(text)
        paths = tuple(entry.root / p for p in line.images)
        s = self.settings
        budget = entry.max_dynamic_patch or s.max_dynamic_patch
        # InternVL's multi-image split: each image gets an equal share of the tile budget.
        per_image = max(1, budget // len(paths)) if paths else budget
        tiles = []
        for p in paths:
            try:
                w, h = self._headers.size(p)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise PairSkip("missing_media", f"image {p} does not exist (or is not a file)") from None
            except (OSError, Image.DecompressionBombError, SyntaxError) as e:
                raise PairSkip("corrupt_media", f"cannot read image {p}: {e}") from None
            cols, rows = choose_grid(w, h, min(s.min_dynamic_patch, per_image), per_image, s.tile_size)
            tiles.append(cols * rows + (1 if s.use_thumbnail and cols * rows > 1 else 0))
        n_tokens = [n * s.tokens_per_tile for n in tiles]
        lengths, supervised = [], []
        for side in SIDES:
            try:
                blocks = count_turns(line.conversation(side), self.tokenizer, self.template, n_tokens,
                                     self.system_message)
            except ConversationError as e:
                raise PairSkip("image_count_mismatch", str(e)) from None
            lengths.append(sum(b["length"] for b in blocks))
            supervised.append(sum(b["supervised"] for b in blocks))
        if max(lengths) > self.max_seq_length:
            raise PairSkip("too_long", f"chosen {lengths[0]} / rejected {lengths[1]} tokens > max_seq_length "
                                       f"{self.max_seq_length}")
        return PlannedPair(line, paths, tuple(tiles), per_image, (lengths[0], lengths[1]),
                           (supervised[0], supervised[1]))

    def load(self, entry: DatasetEntry, pair: PlannedPair, augment_key: str = "0") -> dict[str, Any]:
        """The item: {chosen,rejected}_{input_ids,labels} (long tensors) and, with images, the uint8 tiles
        `pixel_tiles` (n, 3, s, s) + `pixel_norm` that collator.pixel_values normalises. Both answers share the
        tiles (one copy). `augment_key` seeds the JPEG draw of data_augment."""
        s = self.settings
        arrays = []
        jpeg = random.Random(f"{self.seed}-{augment_key}") if entry.data_augment else None
        for path, planned in zip(pair.images, pair.tiles):
            u8 = image_to_tiles_u8(load_rgb(path), min(s.min_dynamic_patch, pair.per_image), pair.per_image,
                                   s.tile_size, s.use_thumbnail, s.resize_backend, jpeg)
            if len(u8) != planned:
                raise PairSkip("corrupt_media", f"image {path} changed since the scan ({planned} tiles planned, "
                                                f"{len(u8)} now)")
            arrays.append(u8)
        n_tokens = [n * s.tokens_per_tile for n in pair.tiles]
        item: dict[str, Any] = {}
        for side in SIDES:
            blocks = tokenize_turns(pair.line.conversation(side), self.tokenizer, self.template, n_tokens,
                                    self.system_message)
            item[f"{side}_input_ids"] = torch.tensor([i for b in blocks for i in b["input_ids"]], dtype=torch.long)
            item[f"{side}_labels"] = torch.tensor([i for b in blocks for i in b["labels"]], dtype=torch.long)
        if arrays:
            item["pixel_tiles"] = torch.from_numpy(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))
            item["pixel_norm"] = s.normalize_type
        return item


class PreferenceDataset(torch.utils.data.Dataset):
    """Every usable pair of `entries` (the pre-flight scan keeps per-line numpy arrays only); one epoch is
    `repeat_time` applied per dataset, as for SFT (mixture.py). Items come from `PreferenceEncoder.load`."""

    def __init__(self, entries: Sequence[DatasetEntry], encoder: PreferenceEncoder, on_error: str = "strict",
                 cache_dir: str | Path | None = None, scan_workers: int | None = 1):
        """Scan (or, with `cache_dir`, load the cached scan of: data/preference_scan.py) every line of `entries`,
        with `scan_workers` processes (None: every core)."""
        if on_error not in ("strict", "skip"):
            raise ValueError(f"data.on_error must be 'strict' or 'skip', got {on_error!r}")
        self.entries, self.encoder, self.on_error = list(entries), encoder, on_error
        # Pairs replaced at load time (on_error=skip), by reason: shared memory, so the counts made in data-loader
        # worker processes reach the main process (and metrics.json's data report).
        self.load_failures = LoadFailures(tuple(REASONS))
        scan, self.scan_source = cached_scan(self.entries, encoder, cache_dir, scan_workers)
        self.skipped: Counter[str] = scan.skipped()  # lines dropped by the scan, by reason
        self.too_long: Counter[str] = scan.too_long(self.entries)  # dataset name -> pairs dropped as too long
        # too_long is a skip under either policy (data.max_drop_share decides whether it stops the run)
        problems = [f"{self.entries[p['dataset']].annotation}:{p['line_no']}: {p['reason']}: {p['detail']}"
                    for p in scan.problems if on_error == "strict" and p["reason"] != "too_long"]
        if problems:
            shown = "\n  ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else "")
            raise PreferenceDataError(f"{len(problems)} problem(s) in the preference data (data.on_error=strict; fix "
                                      f"them, or set data.on_error=skip to skip and count them):\n  {shown}")
        self._index(scan.rows)

    def _index(self, rows: dict[str, np.ndarray]) -> None:
        """Index the scan's rows (every usable pair, by dataset) and draw epoch 0."""
        self.rows = rows
        self.reader = LineReader(self.entries)
        if not len(self.rows["dataset"]):
            raise PreferenceDataError(f"no usable preference pairs (skipped by reason: {dict(self.skipped)})")
        sizes = np.bincount(self.rows["dataset"], minlength=len(self.entries))
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._sizes = {e.name: int(n) for e, n in zip(self.entries, sizes)}
        self.slots = epoch_slots(self._sizes, {e.name: e.repeat_time for e in self.entries},
                                 {e.name: e.weight for e in self.entries})
        self.epoch = -1
        self.set_epoch(0)

    def subset(self, keep: np.ndarray, entries: Sequence[DatasetEntry] | None = None) -> "PreferenceDataset":
        """The pairs of the scan rows where `keep` (e.g. a held-out split), without scanning again; `entries`
        replaces the datasets' settings (same datasets, same order: an eval set's repeat_time 1)."""
        out = object.__new__(PreferenceDataset)
        out.entries = list(entries) if entries is not None else self.entries
        out.encoder, out.on_error = self.encoder, self.on_error
        out.skipped, out.too_long, out.load_failures = Counter(), Counter(), LoadFailures(tuple(REASONS))
        out.scan_source = self.scan_source
        out._index({k: v[keep] for k, v in self.rows.items()})
        return out

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) == self.epoch:
            return
        self.epoch = int(epoch)
        picks = epoch_indices(self._sizes, self.slots, self.encoder.seed, self.epoch)
        self._order = np.concatenate([self._starts[d] + picks[e.name] for d, e in enumerate(self.entries)])

    def epoch_order(self) -> np.ndarray:
        """Scan rows (indices into `rows`) of this epoch's items, by dataset (the sampler shuffles them)."""
        return self._order

    def __len__(self) -> int:
        return len(self._order)

    @property
    def lengths(self) -> np.ndarray:
        """Per item of this epoch, the longer of its two sequences (for length-grouped sampling)."""
        return np.maximum(self.rows["chosen_length"], self.rows["rejected_length"])[self._order]

    def raw_line(self, row: int) -> RawLine:
        r = self.rows
        return self.reader.read(int(r["dataset"][row]), int(r["line_no"][row]), int(r["offset"][row]),
                                int(r["nbytes"][row]))

    def load_row(self, row: int, augment_key: str) -> dict[str, Any]:
        """The item of scan row `row`; raises PairSkip/OSError when its line or media changed since the scan."""
        line = self.raw_line(row)
        entry = self.entries[int(self.rows["dataset"][row])]
        item = self.encoder.load(entry, self.encoder.plan(entry, line.text), augment_key)
        item["where"] = line.where
        # (dataset index, 1-based jsonl line): the key of a pair in score_pairs' output and precomputed log-probs.
        item["pair_id"] = (int(self.rows["dataset"][row]), int(self.rows["line_no"][row]))
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        # Under on_error=skip a pair whose media broke after the scan is counted and the next pair of the epoch
        # order served instead (deterministically), so every batch keeps its size and every rank its step count.
        tries = min(len(self), MAX_REPLACEMENTS + 1)
        for k in range(tries):
            position = (index + k) % len(self)
            row = int(self._order[position])
            try:
                return self.load_row(row, f"{self.epoch}-{position}")
            except (PairSkip, OSError, UnicodeDecodeError, Image.DecompressionBombError, SyntaxError) as e:
                where = f"{self.entries[int(self.rows['dataset'][row])].annotation}:{int(self.rows['line_no'][row])}"
                if self.on_error == "strict":
                    raise PreferenceDataError(f"{where}: {e} (changed since the pre-flight scan; data.on_error=skip "
                                              "skips such pairs)") from e
                self.load_failures.add(getattr(e, "reason", "corrupt_media"))
                log.warning("%s: skipping pair (%s); serving the next pair instead", where, e)
        raise PreferenceDataError(f"{tries} consecutive pairs from epoch position {index} failed to load "
                                  "(data.on_error=skip)")


def collate_pairs(features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """B pairs -> one batch of 2B rows, [all chosen; all rejected], right-padded to one length with `pad_token_id`.

    The attention mask comes from the true lengths (a real token with id 0 stays attended). `pixel_values` holds
    every pair's tiles once, in pair order: `sequence_logps` encodes them once and gives the features to both
    halves. `pair_ids` (long [B, 2]: dataset index, 1-based jsonl line) names each pair when its items carry a
    `pair_id` (PreferenceDataset's do)."""
    seqs = [f[f"{side}_input_ids"] for side in SIDES for f in features]
    labels = [f[f"{side}_labels"] for side in SIDES for f in features]
    width = max(len(s) for s in seqs)
    rows = len(seqs)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    label_t = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for r, (ids, lab) in enumerate(zip(seqs, labels)):
        input_ids[r, : len(ids)] = ids
        label_t[r, : len(lab)] = lab
        mask[r, : len(ids)] = 1
    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "labels": label_t,
                             "num_pairs": len(features)}
    if all("pair_id" in f for f in features):
        batch["pair_ids"] = torch.tensor([list(f["pair_id"]) for f in features], dtype=torch.long).reshape(-1, 2)
    pv = pixel_values(features)
    if pv is not None:
        batch["pixel_values"] = pv
    return batch
