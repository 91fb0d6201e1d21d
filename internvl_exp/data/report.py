"""What the data pipeline found: pre-flight counts, and load-time failures counted across workers."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from internvl_exp.dist import process_group

# Reasons a planned sample can still fail when its pixels are loaded (files change, or only a full
# decode finds the damage: the pre-flight scan reads image headers and video metadata only).
# tile_mismatch: the image decoded to another tile count than planned (it changed since the scan).
LOAD_REASONS = ("missing_media", "corrupt_media", "video_unreadable", "tile_mismatch")


class LoadFailures:
    """Per-reason counters in shared memory, so increments made in data-loader workers are seen by
    the main process (a plain attribute would be incremented in the worker's copy only)."""

    def __init__(self, reasons: tuple[str, ...] = LOAD_REASONS) -> None:
        self.reasons = tuple(reasons)  # preference pairs have their own (data/preference.py REASONS)
        self._counts = multiprocessing.Array("q", len(self.reasons))

    def add(self, reason: str) -> None:
        with self._counts.get_lock():
            self._counts[self.reasons.index(reason)] += 1

    def total(self) -> int:
        return sum(self.as_dict().values())

    def as_dict(self, all_ranks: bool = False) -> dict[str, int]:
        """Counts by reason: this process's (with its data-loader workers), or with `all_ranks` summed over
        every rank of the distributed run (a collective: every rank must call it)."""
        with self._counts.get_lock():
            counts = list(self._counts[:])
        if all_ranks:
            import torch

            dist = process_group()
            if dist is not None:
                device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
                t = torch.tensor(counts, dtype=torch.int64, device=device)
                dist.all_reduce(t)
                counts = t.tolist()
        return {r: int(n) for r, n in zip(self.reasons, counts) if n}


@dataclass(frozen=True)
class Problem:
    """One skipped annotation line."""

    where: str  # "file:line"
    reason: str  # a key of planner.REASONS
    detail: str
    dataset: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}: {self.detail}"


@dataclass
class DataReport:
    """What the pre-flight scan found; goes into logs and metrics.json (`metrics["data"]`)."""

    samples: int = 0
    per_dataset: dict[str, int] = field(default_factory=dict)  # usable samples per dataset (after repeat_time)
    skipped: Counter = field(default_factory=Counter)  # reason -> lines skipped
    truncated: int = 0
    problems: list[Problem] = field(default_factory=list)  # every skipped line, in file order
    mixture: dict[str, int] | None = None  # samples per dataset in one epoch, when weights are set
    tokens: int = 0  # total tokens in one epoch
    supervised_tokens: int = 0
    load_failures: LoadFailures | None = None
    # dataset -> lines the length policy dropped (data.max_drop_share bounds the share; data/dataset.py)
    dropped_too_long: dict[str, int] = field(default_factory=dict)
    plan_source: str = "scan"  # "scan" (no cache), "cache-miss" (scanned and cached) or "cache-hit"
    # Images (of usable lines) with an EXIF orientation tag other than 1, and whether it is applied on load.
    exif_rotated: int = 0
    exif_transpose: bool = False

    def count_epoch(self, plan: Any, rows: np.ndarray) -> None:
        """Samples and (supervised) tokens of one epoch: `rows` are the plan rows of the epoch's samples."""
        self.samples = len(rows)
        self.tokens = int(np.asarray(plan.rows["length"], dtype=np.int64)[rows].sum())
        self.supervised_tokens = int(np.asarray(plan.rows["supervised"], dtype=np.int64)[rows].sum())

    def as_dict(self, all_ranks: bool = False) -> dict[str, Any]:
        """The report for metrics.json; `all_ranks`: load failures summed over the ranks (a collective)."""
        out: dict[str, Any] = {
            "samples": self.samples,
            "per_dataset": dict(self.per_dataset),
            "skipped_by_reason": dict(self.skipped),
            "truncated": self.truncated,
            "dropped_too_long_per_dataset": dict(self.dropped_too_long),
            "tokens_per_epoch": self.tokens,
            "supervised_tokens_per_epoch": self.supervised_tokens,
        }
        if self.mixture is not None:
            out["mixture"] = dict(self.mixture)
        if self.load_failures is not None:
            # Each failure was replaced by the next planned sample of the epoch (on_error=skip).
            failures = self.load_failures.as_dict(all_ranks)
            out["load_failures_by_reason"] = failures
            out["load_failures"] = sum(failures.values())
        out["images_with_exif_rotation"] = self.exif_rotated
        out["plan"] = self.plan_source
        return out

    def exif_note(self) -> str:
        """One line on EXIF rotation tags for the data header ("" when no image has one)."""
        if not self.exif_rotated:
            return ""
        if self.exif_transpose:
            return f"{self.exif_rotated:,} image(s) with an EXIF rotation tag, turned upright on load (data.exif_transpose=true)"
        return (f"{self.exif_rotated:,} image(s) with an EXIF rotation tag, used as stored, as InternVL does "
                "(data.exif_transpose=true turns them upright)")
