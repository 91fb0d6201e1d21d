"""The supervised dataset: a pre-flight scan that plans every sample, then lazy loading of pixels.

Pre-flight (before the model loads, `build_dataset`): every annotation line is parsed and checked
(planner.py), its token length is computed, and the length policy is applied. Problems follow
`on_error`: `strict` stops with `file:line: reason` for every problem found; `skip` drops the line and
counts it by reason. Media that still fails when it is loaded follows the same policy: `strict` raises,
`skip` returns None (the collator drops it) and counts it. Nothing is ever replaced by another sample.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from internvl_exp.data.images import frames_to_tiles_u8, image_to_tiles_u8, jpeg_reencode, load_rgb
from internvl_exp.data.mixture import mix
from internvl_exp.data.planner import POLICY_REASONS, ImageSettings, PlannedSample, Planner
from internvl_exp.data.report import DataReport, LoadFailures, Problem
from internvl_exp.data.sources import DatasetEntry, iter_samples
from internvl_exp.data.templates import tokenize_turns
from internvl_exp.data.video import VideoError, frame_indices, load_frames
from internvl_exp.errors import UserError

__all__ = [
    "DataError", "DataReport", "ImageSettings", "PlannedSample", "Planner", "SupervisedDataset",
    "apply_weights", "build_dataset", "fatal_problems", "scan",
]

log = logging.getLogger(__name__)


class DataError(UserError):
    """Bad data under `on_error=strict`: the message lists every problem as `file:line: reason`."""


PROGRESS_MIN_LINES = 5000  # about 2 s of scanning (~2,000 image lines/s on one core, see docs/benchmarks.md)

class SupervisedDataset(torch.utils.data.Dataset):
    """Map-style dataset of planned samples; pixels are loaded and tiled in __getitem__.

    An item is {"input_ids", "labels"} plus, with media, {"pixel_tiles": uint8 (n, 3, s, s), "pixel_norm"}:
    `Collator` (or `collator.pixel_values([item])`) turns the tiles into the model's float pixel_values.
    """

    def __init__(self, samples: list[PlannedSample], tokenizer: Any, template: str, settings: ImageSettings,
                 on_error: str = "strict", system_message: str | None = None, seed: int = 0):
        self.samples = samples
        self.tokenizer = tokenizer
        self.template = template
        self.settings = settings
        self.on_error = on_error
        self.system_message = system_message
        self.seed = seed
        self.epoch = 0
        self.load_failures = LoadFailures()

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer's data loader each epoch (accelerate forwards `set_epoch` to the dataset), so
        augmentation draws (JPEG quality, random video frames) change between epochs yet stay reproducible."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        return [s.length for s in self.samples]

    def _frames(self, sample: PlannedSample, rng: random.Random) -> list[Image.Image]:
        video = sample.video
        indices = frame_indices(video.info.count, sample.num_frames, self.settings.frame_sampling, rng)
        return load_frames(video.path, video.raw, video.info, indices)

    def _pixels(self, sample: PlannedSample, index: int) -> np.ndarray | None:
        s = self.settings
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        if sample.video is not None:
            frames = self._frames(sample, rng)
            if sample.entry.data_augment:
                frames = [jpeg_reencode(f, rng) for f in frames]
            return frames_to_tiles_u8(frames, s.tile_size, s.resize_backend)
        if not sample.images:
            return None
        arrays = []
        max_tiles = sample.max_tiles_per_image
        for path in sample.images:
            img = load_rgb(path)
            if sample.entry.data_augment:
                img = jpeg_reencode(img, rng)
            arrays.append(image_to_tiles_u8(img, min(s.min_dynamic_patch, max_tiles), max_tiles, s.tile_size, s.use_thumbnail,
                                            s.resize_backend))
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def _load_failed(self, sample: PlannedSample, reason: str, err: Exception) -> None:
        if self.on_error == "strict":
            raise DataError(
                f"{sample.line.where}: {reason}: {err} (data.on_error=strict; set data.on_error=skip to skip such samples)"
            ) from err
        self.load_failures.add(reason)
        log.warning("%s: skipping sample (%s): %s", sample.line.where, reason, err)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.samples[index]
        try:
            pixels = self._pixels(sample, index)
        except FileNotFoundError as e:
            return self._load_failed(sample, "missing_media", e)
        except VideoError as e:
            return self._load_failed(sample, "video_unreadable", e)
        except (OSError, Image.DecompressionBombError, SyntaxError) as e:  # PIL raises SyntaxError for some broken files
            return self._load_failed(sample, "corrupt_media", e)
        n_tokens = [n * self.settings.tokens_per_tile for n in sample.num_tiles]
        blocks = tokenize_turns(sample.conversations, self.tokenizer, self.template, n_tokens, self.system_message)
        item = {
            "input_ids": torch.tensor([i for b in blocks for i in b["input_ids"]], dtype=torch.long),
            "labels": torch.tensor([i for b in blocks for i in b["labels"]], dtype=torch.long),
        }
        if pixels is not None:
            if len(pixels) != sum(sample.num_tiles):  # the planned token count must match the tiles loaded
                raise RuntimeError(f"{sample.line.where}: planned {sum(sample.num_tiles)} tiles, loaded {len(pixels)}")
            # uint8 tiles; the collator normalises them into the batch's float pixel_values (collator.py).
            item["pixel_tiles"] = torch.from_numpy(pixels)
            item["pixel_norm"] = self.settings.normalize_type
        return item


def scan(entries: list[DatasetEntry], tokenizer: Any, template: str, settings: ImageSettings, max_seq_length: int,
         length_policy: str = "drop", system_message: str | None = None, seed: int = 0) -> tuple[list[PlannedSample], DataReport]:
    """The pre-flight scan: plan every line of every dataset (after repeat_time); never raises on bad lines."""
    planner = Planner(tokenizer, template, settings, max_seq_length, length_policy, system_message, seed)
    report = DataReport()
    samples: list[PlannedSample] = []
    plans: dict[tuple[str, int], tuple] = {}  # repeated lines (repeat_time > 1) are planned once
    lines = iter_samples(entries, seed)
    # A bar only where the wait is noticeable (and only on a terminal: tqdm's disable=None).
    progress = tqdm(lines, desc="pre-flight data scan", unit="line", disable=None if len(lines) >= PROGRESS_MIN_LINES else True)
    for entry, line in progress:
        key = (entry.name, line.line_no)
        first = key not in plans
        if first:
            plans[key] = planner.plan(entry, line)
        planned, reason, detail = plans[key]
        if planned is None:
            if first:  # counted per annotation line, not per repeat_time copy
                report.skipped[reason] += 1
                report.problems.append(Problem(line.where, reason, detail, entry.name))
            continue
        report.truncated += planned.truncated and first
        samples.append(planned)
    counts = Counter(s.entry.name for s in samples)
    report.per_dataset = {e.name: counts.get(e.name, 0) for e in entries}
    return samples, report


def fatal_problems(report: DataReport) -> list[str]:
    """The problems that stop a run under on_error=strict (all but length-policy drops), as `file:line: reason: detail`."""
    return [str(p) for p in report.problems if p.reason not in POLICY_REASONS]


def apply_weights(entries: list[DatasetEntry], samples: list[PlannedSample], report: DataReport, seed: int) -> list[PlannedSample]:
    """The epoch's samples under the datasets' mixture weights (unchanged when no dataset has a weight)."""
    weights = {e.name: e.weight for e in entries if e.weight is not None}
    if not weights:
        return samples
    groups: dict[str, list[PlannedSample]] = defaultdict(list)
    for s in samples:
        groups[s.entry.name].append(s)
    mixed, slots = mix({e.name: groups[e.name] for e in entries}, weights, seed)
    report.mixture = slots
    return mixed


def build_dataset(entries: list[DatasetEntry], tokenizer: Any, template: str, settings: ImageSettings,
                  max_seq_length: int, length_policy: str = "drop", on_error: str = "strict",
                  system_message: str | None = None, seed: int = 0) -> tuple[SupervisedDataset, DataReport]:
    """Scan and plan every sample (the pre-flight check), apply mixture weights, wrap in a dataset."""
    if on_error not in ("strict", "skip"):
        raise ValueError(f"data.on_error must be 'strict' or 'skip', got {on_error!r}")
    samples, report = scan(entries, tokenizer, template, settings, max_seq_length, length_policy, system_message, seed)
    bad = fatal_problems(report)
    if bad and on_error == "strict":
        raise DataError(
            f"{len(bad)} problem(s) in the data (data.on_error=strict; fix them, or set data.on_error=skip to skip and count them):\n  "
            + "\n  ".join(bad)
        )
    if report.skipped:
        log.warning("data: skipped %d sample(s) by reason: %s", sum(report.skipped.values()), dict(report.skipped))
        for p in report.problems[:20]:
            log.warning("data: %s", p)
        if len(report.problems) > 20:
            log.warning("data: ... and %d more (python -m internvl_exp.tools.data_check lists them all)", len(report.problems) - 20)
    if report.truncated:
        log.warning("data: truncated %d sample(s) to max_seq_length %d (whole trailing turns cut)", report.truncated, max_seq_length)
    if not samples:
        raise DataError("no usable samples after the pre-flight scan:\n  " + "\n  ".join(map(str, report.problems[:20])))
    samples = apply_weights(entries, samples, report, seed)
    report.count_epoch(samples)
    dataset = SupervisedDataset(samples, tokenizer, template, settings, on_error, system_message, seed)
    report.load_failures = dataset.load_failures
    return dataset, report

