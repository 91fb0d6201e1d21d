"""The supervised dataset: a pre-flight scan that plans every sample, then lazy loading of pixels.

Pre-flight (before the model loads): every annotation line is parsed and checked (valid JSON, roles
alternate, one `<image>` per image, media files exist and open), its token length is computed (text +
image tokens from the tile count), and the length policy is applied. Problems follow `on_error`:
`strict` stops with `file:line: reason` for every problem found; `skip` drops the line and counts it
by reason. Nothing is ever silently replaced by another sample.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from internvl_exp.data.images import jpeg_reencode, load_rgb, tiles_to_array
from internvl_exp.data.sources import DatasetEntry, RawLine, iter_samples
from internvl_exp.data.templates import IMAGE_PLACEHOLDER, ConversationError, normalise_roles, tokenize_turns
from internvl_exp.data.tiling import choose_grid, tile_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSettings:
    tile_size: int
    tokens_per_tile: int
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    use_thumbnail: bool = True
    normalize_type: str = "imagenet"


@dataclass
class PlannedSample:
    entry: DatasetEntry
    line: RawLine
    conversations: list[dict]
    images: list[Path]
    max_tiles_per_image: int
    num_tiles: list[int]  # per image
    length: int
    supervised_tokens: int


@dataclass
class DataReport:
    """What the pre-flight scan found; goes into logs and metrics.json."""

    samples: int = 0
    per_dataset: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0
    problems: list[str] = field(default_factory=list)
    load_failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "per_dataset": dict(self.per_dataset),
            "skipped_by_reason": dict(self.skipped),
            "truncated": self.truncated,
        }


class DataError(ValueError):
    """Bad data under `on_error=strict`: the message lists every problem as `file:line: reason`."""


def _num_tiles(width: int, height: int, max_tiles: int, s: ImageSettings) -> int:
    cols, rows = choose_grid(width, height, s.min_dynamic_patch, max_tiles, s.tile_size)
    n = cols * rows
    return n + 1 if (s.use_thumbnail and n > 1) else n


def _media_list(sample: dict) -> list[str]:
    image = sample.get("image")
    if not image:
        return []
    return [image] if isinstance(image, str) else list(image)


class Planner:
    """Turns raw lines into planned samples, or a reason why not."""

    def __init__(self, tokenizer: Any, template: str, settings: ImageSettings, max_seq_length: int,
                 length_policy: str, system_message: str | None = None):
        if length_policy not in ("drop", "truncate"):
            raise ValueError(f"data.length_policy must be 'drop' or 'truncate', got {length_policy!r}")
        self.tokenizer = tokenizer
        self.template = template
        self.settings = settings
        self.max_seq_length = max_seq_length
        self.length_policy = length_policy
        self.system_message = system_message

    def plan(self, entry: DatasetEntry, line: RawLine) -> tuple[PlannedSample | None, str | None, str | None]:
        """(sample, skip_reason, detail). A sample may come back truncated (detail == 'truncated')."""
        try:
            sample = json.loads(line.text)
        except json.JSONDecodeError as e:
            return None, "invalid_json", f"not valid JSON ({e.msg} at column {e.colno})"
        if not isinstance(sample, dict):
            return None, "invalid_json", "a line must be a JSON object"
        if sample.get("video"):
            return None, "unsupported", "video samples are not supported yet"
        convs = sample.get("conversations")
        try:
            normalise_roles(convs)
        except ConversationError as e:
            return None, "bad_conversation", str(e)
        media = _media_list(sample)
        convs = [dict(t) for t in convs]
        n_ph = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in convs)
        if media and n_ph == 0:
            # InternVL prepends the placeholder(s) to the first human turn when they are missing.
            first = 1 if convs[0]["from"] == "system" else 0
            convs[first]["value"] = (IMAGE_PLACEHOLDER + "\n") * len(media) + convs[first]["value"]
            n_ph = len(media)
        if n_ph != len(media):
            return None, "image_count_mismatch", f"{n_ph} <image> placeholder(s) but {len(media)} image(s)"
        paths = [entry.root / m for m in media]
        sizes = []
        for p in paths:
            if not p.exists():
                return None, "missing_media", f"media file {p} does not exist"
            try:
                with Image.open(p) as im:
                    sizes.append(im.size)
            except (UnidentifiedImageError, OSError) as e:
                return None, "corrupt_media", f"cannot read image {p}: {e}"
        s = self.settings
        budget = entry.max_dynamic_patch or s.max_dynamic_patch
        per_image = max(1, budget // len(media)) if len(media) > 1 else budget
        tiles = [_num_tiles(w, h, per_image, s) for w, h in sizes]
        blocks = tokenize_turns(convs, self.tokenizer, self.template, [n * s.tokens_per_tile for n in tiles], self.system_message)
        length = sum(len(b["input_ids"]) for b in blocks)
        detail = None
        if length > self.max_seq_length:
            if self.length_policy == "drop":
                return None, "too_long", f"{length} tokens > max_seq_length {self.max_seq_length}"
            # Cut whole trailing (human, gpt) pairs; keep the system block and at least one pair.
            keep = len(blocks)
            while keep > 3 and sum(len(b["input_ids"]) for b in blocks[:keep]) > self.max_seq_length:
                keep -= 2
            length = sum(len(b["input_ids"]) for b in blocks[:keep])
            if length > self.max_seq_length:
                return None, "too_long", f"{length} tokens > max_seq_length {self.max_seq_length} even after truncation"
            n_images = sum(b["num_images"] for b in blocks[:keep])
            system_turn = 1 if convs[0]["from"] == "system" else 0
            convs = convs[: system_turn + keep - 1]
            paths, tiles = paths[:n_images], tiles[:n_images]
            blocks = blocks[:keep]
            detail = "truncated"
        supervised = sum(1 for b in blocks for t in b["labels"] if t != -100)
        if supervised == 0:
            return None, "no_supervised_tokens", "no assistant tokens carry loss"
        return PlannedSample(entry, line, convs, paths, per_image, tiles, length, supervised), None, detail


class SupervisedDataset(torch.utils.data.Dataset):
    """Map-style dataset of planned samples; pixels are loaded and tiled in __getitem__."""

    def __init__(self, samples: list[PlannedSample], tokenizer: Any, template: str, settings: ImageSettings,
                 on_error: str = "strict", system_message: str | None = None, seed: int = 0):
        self.samples = samples
        self.tokenizer = tokenizer
        self.template = template
        self.settings = settings
        self.on_error = on_error
        self.system_message = system_message
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        return [s.length for s in self.samples]

    def _pixels(self, sample: PlannedSample, index: int) -> torch.Tensor | None:
        if not sample.images:
            return None
        s = self.settings
        rng = random.Random(f"{self.seed}-{index}")
        arrays = []
        for path in sample.images:
            img = load_rgb(path)
            if sample.entry.data_augment:
                img = jpeg_reencode(img, rng)
            tiles = tile_image(img, s.min_dynamic_patch, sample.max_tiles_per_image, s.tile_size, s.use_thumbnail)
            arrays.append(tiles_to_array(tiles, s.tile_size, s.normalize_type))
        import numpy as np

        return torch.from_numpy(np.concatenate(arrays))

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.samples[index]
        try:
            pixel_values = self._pixels(sample, index)
        except (UnidentifiedImageError, OSError) as e:
            if self.on_error == "strict":
                raise DataError(f"{sample.line.where}: cannot load image: {e}") from e
            log.warning("%s: skipping sample, cannot load image: %s", sample.line.where, e)
            return None
        n_tokens = [n * self.settings.tokens_per_tile for n in sample.num_tiles]
        blocks = tokenize_turns(sample.conversations, self.tokenizer, self.template, n_tokens, self.system_message)
        item = {
            "input_ids": torch.tensor([i for b in blocks for i in b["input_ids"]], dtype=torch.long),
            "labels": torch.tensor([i for b in blocks for i in b["labels"]], dtype=torch.long),
        }
        if pixel_values is not None:
            item["pixel_values"] = pixel_values
        return item


def build_dataset(entries: list[DatasetEntry], tokenizer: Any, template: str, settings: ImageSettings,
                  max_seq_length: int, length_policy: str = "drop", on_error: str = "strict",
                  system_message: str | None = None, seed: int = 0) -> tuple[SupervisedDataset, DataReport]:
    """Scan and plan every sample (the pre-flight check), then wrap them in a dataset."""
    if on_error not in ("strict", "skip"):
        raise ValueError(f"data.on_error must be 'strict' or 'skip', got {on_error!r}")
    planner = Planner(tokenizer, template, settings, max_seq_length, length_policy, system_message)
    report = DataReport()
    samples: list[PlannedSample] = []
    for entry, line in iter_samples(entries, seed):
        planned, reason, detail = planner.plan(entry, line)
        if planned is None:
            report.skipped[reason] += 1
            report.problems.append(f"{line.where}: {reason}: {detail}")
            continue
        if detail == "truncated":
            report.truncated += 1
        samples.append(planned)
        report.per_dataset[entry.name] = report.per_dataset.get(entry.name, 0) + 1
    report.samples = len(samples)
    too_long_only = all(r == "too_long" for r in report.skipped)
    if report.problems and on_error == "strict" and not too_long_only:
        bad = [p for p in report.problems if ": too_long:" not in p]
        raise DataError(
            f"{len(bad)} problem(s) in the data (data.on_error=strict; set data.on_error=skip to skip them):\n  "
            + "\n  ".join(bad)
        )
    if report.skipped:
        log.warning("data: skipped %d sample(s): %s", sum(report.skipped.values()), dict(report.skipped))
    if report.truncated:
        log.warning("data: truncated %d sample(s) to max_seq_length", report.truncated)
    if not samples:
        raise DataError("no usable samples after the pre-flight scan:\n  " + "\n  ".join(report.problems[:20]))
    return SupervisedDataset(samples, tokenizer, template, settings, on_error, system_message, seed), report
