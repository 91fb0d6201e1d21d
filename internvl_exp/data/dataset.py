"""The supervised dataset: a pre-flight plan of every sample, then lazy loading of text and pixels.

Pre-flight (before the model loads, `build_dataset`): every annotation line is parsed and checked
(planner.py), its token length is computed, and the length policy is applied, in parallel and cached per
machine (prescan.py); the result is a `Plan` of numpy arrays (plan.py). Problems follow `on_error`:
`strict` stops with `file:line: reason` for every problem found; `skip` drops the line and counts it by
reason.

Loading (`__getitem__`, in the data-loader workers): the line is read again by byte offset, parsed,
tokenised, and its media are decoded and tiled. Media that still fails then follows the same policy:
`strict` raises; `skip` counts the failure by reason and serves the next planned sample of the epoch
order instead (deterministically), so every batch keeps its size and every rank its step count.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from internvl_exp.data.images import frames_to_tiles_u8, image_to_tiles_u8, load_rgb
from internvl_exp.data.mixture import epoch_indices, epoch_slots
from internvl_exp.data.plan import LineReader, Plan, read_line
from internvl_exp.data.planner import POLICY_REASONS, ImageSettings, PlannedSample, Planner, Skip
from internvl_exp.data.prescan import build_plan
from internvl_exp.data.report import DataReport, LoadFailures
from internvl_exp.data.sources import DatasetEntry
from internvl_exp.data.templates import tokenize_turns
from internvl_exp.data.video import VideoError, frame_indices, load_frames
from internvl_exp.errors import UserError

__all__ = [
    "DataError", "DataReport", "ImageSettings", "PlannedSample", "Planner", "SupervisedDataset",
    "build_dataset", "fatal_problems", "scan",
]

log = logging.getLogger(__name__)

MAX_REPLACEMENTS = 100  # consecutive planned samples tried under on_error=skip before giving up


class DataError(UserError):
    """Bad data under `on_error=strict`: the message lists every problem as `file:line: reason`."""


class LoadFailed(Exception):
    """A planned sample whose media failed to load: `reason` is a key of report.LOAD_REASONS."""

    def __init__(self, reason: str, err: Exception):
        super().__init__(str(err))
        self.reason, self.err = reason, err


class PlannedSamples(Sequence[PlannedSample]):
    """A read-only list view: item i is the PlannedSample of plan row `rows[i]`, rebuilt from its line."""

    def __init__(self, dataset: "SupervisedDataset", rows: np.ndarray):
        self._ds, self._rows = dataset, rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return self._ds.sample_of_row(int(self._rows[i]))


class SupervisedDataset(torch.utils.data.Dataset):
    """Map-style dataset over a plan; one epoch is `epoch_order()` (mixture and repeat_time applied).

    An item is {"input_ids", "labels"} plus, with media, {"pixel_tiles": uint8 (n, 3, s, s), "pixel_norm"}:
    `Collator` (or `collator.pixel_values([item])`) turns the tiles into the model's float pixel_values.
    """

    def __init__(self, plan: Plan, entries: list[DatasetEntry], planner: Planner, on_error: str = "strict"):
        self.plan = plan
        self.entries = entries
        self.planner = planner
        self.settings = planner.settings
        self.on_error = on_error
        self.seed = planner.seed
        self.reader = LineReader(entries)
        self.load_failures = LoadFailures()
        sizes = plan.per_dataset(len(entries))
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._sizes = {e.name: int(n) for e, n in zip(entries, sizes)}
        self.slots = epoch_slots(self._sizes, {e.name: e.repeat_time for e in entries}, {e.name: e.weight for e in entries})
        self.epoch = -1
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer's data loader each epoch (accelerate forwards `set_epoch` to the dataset):
        the mixture's subsets and the augmentation draws (JPEG quality, video frames) change between epochs
        yet stay reproducible."""
        epoch = int(epoch)
        if epoch == self.epoch:
            return
        picks = epoch_indices(self._sizes, self.slots, self.seed, epoch)
        self._order = np.concatenate(
            [self._starts[d] + picks[e.name] for d, e in enumerate(self.entries)] or [np.empty(0, np.int64)]
        )
        self.epoch = epoch

    def epoch_order(self) -> np.ndarray:
        """Plan rows of this epoch's samples, by dataset (the sampler shuffles them)."""
        return self._order

    def __len__(self) -> int:
        return len(self._order)

    @property
    def samples(self) -> PlannedSamples:
        """This epoch's samples as PlannedSample objects (built on access; nothing is kept per sample)."""
        return PlannedSamples(self, self._order)

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray(self.plan.rows["length"])[self._order]

    def sample_of_row(self, row: int) -> PlannedSample:
        r = self.plan.rows
        d = int(r["dataset"][row])
        try:
            return self.planner.materialize(
                self.entries[d], read_line(self.plan, self.reader, row), per_image=int(r["per_image"][row]),
                tiles=self.plan.tiles_of(row), n_frames=int(r["frames"][row]), video_first=int(r["video_first"][row]),
                video_count=int(r["video_count"][row]), turns=int(r["turns"][row]), length=int(r["length"][row]),
                supervised=int(r["supervised"][row]), truncated=bool(r["truncated"][row]),
            )
        except (Skip, UnicodeDecodeError) as e:  # the bytes at the planned offset are no longer the planned line
            raise DataError(
                f"{self.entries[d].annotation}:{int(r['line_no'][row])}: the annotation file changed after the pre-flight "
                f"scan ({e}); start the run again to plan it again"
            ) from None

    def _frames(self, sample: PlannedSample, rng: random.Random) -> list[Image.Image]:
        video = sample.video
        indices = frame_indices(video.info.count, sample.num_frames, self.settings.frame_sampling, rng)
        return load_frames(video.path, video.raw, video.info, indices)

    def _pixels(self, sample: PlannedSample, position: int) -> np.ndarray | None:
        s = self.settings
        rng = random.Random(f"{self.seed}-{self.epoch}-{position}")
        jpeg = rng if sample.entry.data_augment else None
        if sample.video is not None:
            return frames_to_tiles_u8(self._frames(sample, rng), s.tile_size, s.resize_backend, jpeg)
        if not sample.images:
            return None
        arrays = []
        max_tiles = sample.max_tiles_per_image
        for path in sample.images:
            img = load_rgb(path, s.exif_transpose)
            arrays.append(image_to_tiles_u8(img, min(s.min_dynamic_patch, max_tiles), max_tiles, s.tile_size,
                                            s.use_thumbnail, s.resize_backend, jpeg))
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def load_row(self, row: int, position: int = 0) -> dict[str, Any]:
        """The item of plan row `row` (augmentation seeded as epoch position `position`); raises LoadFailed."""
        sample = self.sample_of_row(row)
        try:
            pixels = self._pixels(sample, position)
        except FileNotFoundError as e:
            raise LoadFailed("missing_media", e) from e
        except VideoError as e:
            raise LoadFailed("video_unreadable", e) from e
        except (OSError, Image.DecompressionBombError, SyntaxError) as e:  # PIL raises SyntaxError for some broken files
            raise LoadFailed("corrupt_media", e) from e
        planned = sum(sample.num_tiles)
        loaded = 0 if pixels is None else len(pixels)
        if loaded != planned:  # the token count was planned from the tiles: the media changed since the scan
            raise LoadFailed("tile_mismatch", ValueError(f"planned {planned} tiles, loaded {loaded} (the media changed since the scan)"))
        n_tokens = [n * self.settings.tokens_per_tile for n in sample.num_tiles]
        blocks = tokenize_turns(sample.conversations, self.planner.tokenizer, self.planner.template, n_tokens,
                                self.planner.system_message)
        item = {
            "input_ids": torch.tensor([i for b in blocks for i in b["input_ids"]], dtype=torch.long),
            "labels": torch.tensor([i for b in blocks for i in b["labels"]], dtype=torch.long),
        }
        if pixels is not None:
            # uint8 tiles; the collator normalises them into the batch's float pixel_values (collator.py).
            item["pixel_tiles"] = torch.from_numpy(pixels)
            item["pixel_norm"] = self.settings.normalize_type
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        for k in range(min(len(self), MAX_REPLACEMENTS + 1)):
            position = (index + k) % len(self)
            try:
                return self.load_row(int(self._order[position]), position)
            except LoadFailed as e:
                where = self.sample_of_row(int(self._order[position])).line.where
                if self.on_error == "strict":
                    raise DataError(
                        f"{where}: {e.reason}: {e.err} (data.on_error=strict; set data.on_error=skip to skip such samples)"
                    ) from e.err
                self.load_failures.add(e.reason)
                log.warning("%s: skipping sample (%s): %s; serving the next planned sample instead", where, e.reason, e.err)
        raise DataError(
            f"{min(len(self), MAX_REPLACEMENTS + 1)} consecutive planned samples from epoch position {index} failed to load "
            "(data.on_error=skip); find such files with `python -m internvl_exp.tools.data_check data=... --decode`"
        )


def scan(entries: list[DatasetEntry], tokenizer: Any, template: str, settings: ImageSettings, max_seq_length: int,
         length_policy: str = "drop", system_message: str | None = None, seed: int = 0, workers: int | None = 1,
         cache_dir: str | None = None) -> tuple[SupervisedDataset, DataReport]:
    """The pre-flight scan: plan every line of every dataset; never raises on bad lines.

    Returns the dataset (under on_error=strict loading; `build_dataset` sets the policy) and the report."""
    planner = Planner(tokenizer, template, settings, max_seq_length, length_policy, system_message, seed)
    plan, source = build_plan(entries, planner, workers, cache_dir)
    report = DataReport(plan_source=source)
    for p in plan.problems:
        report.skipped[p.reason] += 1
    report.problems = list(plan.problems)
    report.truncated = plan.truncated
    report.exif_rotated, report.exif_transpose = plan.exif_rotated, settings.exif_transpose
    dataset = SupervisedDataset(plan, entries, planner)
    count_dataset(report, dataset)
    return dataset, report


def count_dataset(report: DataReport, dataset: SupervisedDataset) -> None:
    """The report's per-dataset and epoch counts for `dataset` (also after a held-out split: data/eval_data.py)."""
    entries = dataset.entries
    pools = epoch_slots(dataset._sizes, {e.name: e.repeat_time for e in entries}, {})
    report.per_dataset = {e.name: pools[e.name] for e in entries}
    report.mixture = dict(dataset.slots) if any(e.weight is not None for e in entries) else None
    report.count_epoch(dataset.plan, dataset.epoch_order())
    report.load_failures = dataset.load_failures


def length_drop_problems(report: DataReport, usable: dict[str, int], max_share: float, max_seq_length: int,
                         length_policy: str) -> str | None:
    """Datasets the length policy emptied, or cut by more than `max_share` of their lines: the message that stops
    the run (before the model loads), or None. Fills report.dropped_too_long either way."""
    dropped: dict[str, int] = {}
    lines: dict[str, int] = dict(usable)
    for p in report.problems:
        lines[p.dataset] = lines.get(p.dataset, 0) + 1
        if p.reason in POLICY_REASONS:
            dropped[p.dataset] = dropped.get(p.dataset, 0) + 1
    report.dropped_too_long = dropped
    over = [(name, n, n / lines[name]) for name, n in dropped.items()
            if usable.get(name, 0) == 0 or n / lines[name] > max_share]
    if not over:
        return None
    rows = "\n  ".join(f"{name}: {n:,} of {lines[name]:,} lines ({share:.0%}) longer than data.max_seq_length="
                       f"{max_seq_length}" + (" -- nothing left of it" if usable.get(name, 0) == 0 else "")
                       for name, n, share in over)
    how = "even after truncation" if length_policy == "truncate" else "under data.length_policy=drop"
    return (f"the length policy would drop too much data ({how}; data.max_drop_share={max_share:g}):\n  {rows}\n"
            "fix: raise data.max_seq_length, or lower model.max_dynamic_patch (fewer image tokens per sample), or "
            "set data.length_policy=truncate (cuts whole trailing turns), or accept a partial loss with "
            "data.max_drop_share=1 (a dataset left empty must be fixed or removed from the mix); "
            "`python -m internvl_exp.tools.data_check` lists every dropped line")


def fatal_problems(report: DataReport) -> list[str]:
    """The problems that stop a run under on_error=strict (all but length-policy drops), as `file:line: reason: detail`."""
    return [str(p) for p in report.problems if p.reason not in POLICY_REASONS]


def build_dataset(entries: list[DatasetEntry], tokenizer: Any, template: str, settings: ImageSettings,
                  max_seq_length: int, length_policy: str = "drop", on_error: str = "strict",
                  system_message: str | None = None, seed: int = 0, scan_workers: int | None = 1,
                  cache_dir: str | None = None, max_drop_share: float = 1.0) -> tuple[SupervisedDataset, DataReport]:
    """Scan and plan every sample (the pre-flight check), then the dataset of epoch 0.

    `scan_workers`: processes for the scan (None: every core available); `cache_dir`: where the plan is
    cached and shared (None: no cache)."""
    if on_error not in ("strict", "skip"):
        raise ValueError(f"data.on_error must be 'strict' or 'skip', got {on_error!r}")
    dataset, report = scan(entries, tokenizer, template, settings, max_seq_length, length_policy, system_message, seed,
                           scan_workers, cache_dir)
    bad = fatal_problems(report)
    if bad and on_error == "strict":
        raise DataError(
            f"{len(bad)} problem(s) in the data (data.on_error=strict; fix them, or set data.on_error=skip to skip and count them):\n  "
            + "\n  ".join(bad)
        )
    too_lossy = length_drop_problems(report, dataset._sizes, max_drop_share, max_seq_length, length_policy)
    if too_lossy:
        raise DataError(too_lossy)
    if report.skipped:
        log.warning("data: skipped %d sample(s) by reason: %s", sum(report.skipped.values()), dict(report.skipped))
        for p in report.problems[:20]:
            log.warning("data: %s", p)
        if len(report.problems) > 20:
            log.warning("data: ... and %d more (python -m internvl_exp.tools.data_check lists them all)", len(report.problems) - 20)
    if report.truncated:
        log.warning("data: truncated %d sample(s) to max_seq_length %d (whole trailing turns cut)", report.truncated, max_seq_length)
    if len(dataset.plan) == 0:
        raise DataError("no usable samples after the pre-flight scan:\n  " + "\n  ".join(map(str, report.problems[:20])))
    dataset.on_error = on_error
    return dataset, report

