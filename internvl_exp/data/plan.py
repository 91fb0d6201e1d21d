"""The planned dataset as flat numpy arrays: one row per usable annotation line, no Python object per sample.

A row holds where the line is (dataset index, line number, byte offset and size in its file) and what the
pre-flight scan decided (token length, supervised tokens, tiles per image, video frames and clip, turns
kept by truncation). A sample's line is read again from its file by offset when it is loaded
(`read_line`), so the plan costs about 50 bytes per sample (docs/benchmarks.md) and, stored as `.npy`
files and opened with `np.load(mmap_mode="r")`, is shared by the ranks of a node and by data-loader
workers through the page cache: nothing is copied on read, whatever the number of workers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from internvl_exp.data.report import Problem
from internvl_exp.data.sources import DatasetEntry, RawLine
from internvl_exp.redact import scrub, secret_values

# Row arrays (name -> dtype). `tiles_at` indexes the flat `tiles` array (tiles per kept image, in order).
ROW_FIELDS: dict[str, str] = {
    "dataset": "int16",
    "line_no": "int32",
    "offset": "int64",
    "nbytes": "int32",
    "length": "int32",
    "supervised": "int32",
    "per_image": "int16",  # the tile budget of each image (InternVL's multi-image split)
    "n_images": "int16",  # images kept (after truncation); tiles[tiles_at : tiles_at + n_images]
    "tiles_at": "int64",
    "frames": "int16",  # video frames sampled (0: no video)
    "video_first": "int32",
    "video_count": "int32",
    "turns": "int16",  # conversation turns kept (all when not truncated)
    "truncated": "bool",
}


@dataclass
class Plan:
    """What the pre-flight scan found: the usable lines as arrays, and every problem."""

    rows: dict[str, np.ndarray]
    tiles: np.ndarray  # uint8, flat
    problems: list[Problem] = field(default_factory=list)
    truncated: int = 0
    exif_rotated: int = 0  # images of usable lines whose EXIF orientation tag asks for a rotation/mirror

    def __len__(self) -> int:
        return len(self.rows["line_no"])

    def per_dataset(self, n_datasets: int) -> np.ndarray:
        """Usable lines per dataset (before repeat_time)."""
        return np.bincount(self.rows["dataset"], minlength=n_datasets)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.rows.values()) + self.tiles.nbytes

    def tiles_of(self, row: int) -> list[int]:
        if self.rows["frames"][row]:
            return [1] * int(self.rows["frames"][row])
        at = int(self.rows["tiles_at"][row])
        return self.tiles[at : at + int(self.rows["n_images"][row])].tolist()

    # --- on disk ------------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, arr in self.rows.items():
            np.save(directory / f"{name}.npy", np.ascontiguousarray(arr))
        np.save(directory / "tiles.npy", self.tiles)
        secrets = secret_values()
        with open(directory / "problems.jsonl", "w", encoding="utf-8") as f:
            for p in self.problems:
                # A cache outlives the run and is shared: a secret in a path or a bad line stays out of it.
                fields = [scrub(str(v), secrets) for v in (p.where, p.reason, p.detail, p.dataset)]
                f.write(json.dumps(fields, ensure_ascii=False) + "\n")
        (directory / "summary.json").write_text(json.dumps({"truncated": self.truncated, "rows": len(self),
                                                                    "exif_rotated": self.exif_rotated}))

    @classmethod
    def load(cls, directory: Path) -> "Plan":
        """Memory-mapped arrays: loading costs no per-row work, and every process shares the pages."""
        rows = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in ROW_FIELDS}
        tiles = np.load(directory / "tiles.npy", mmap_mode="r")
        with open(directory / "problems.jsonl", encoding="utf-8") as f:
            problems = [Problem(*json.loads(line)) for line in f]
        summary = json.loads((directory / "summary.json").read_text())
        return cls(rows, tiles, problems, int(summary["truncated"]), int(summary.get("exif_rotated", 0)))


class LineReader:
    """Reads one annotation line by byte offset (`os.pread`: no shared file position, so it is safe in
    forked data-loader workers). File descriptors are opened lazily, per process."""

    def __init__(self, entries: list[DatasetEntry]):
        self.entries = entries
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"entries": self.entries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["entries"])

    def read(self, dataset: int, line_no: int, offset: int, nbytes: int) -> RawLine:
        if os.getpid() != self._pid:  # a forked worker: its own descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(dataset)
        entry = self.entries[dataset]
        if fd is None:
            fd = self._fds[dataset] = os.open(entry.annotation, os.O_RDONLY)
        data = os.pread(fd, nbytes, offset)
        return RawLine(entry.name, entry.annotation, line_no, data.decode("utf-8"))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def read_line(plan: Plan, reader: LineReader, row: int) -> RawLine:
    r = plan.rows
    return reader.read(int(r["dataset"][row]), int(r["line_no"][row]), int(r["offset"][row]), int(r["nbytes"][row]))

