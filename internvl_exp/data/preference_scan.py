"""The pre-flight scan of preference pairs, cached and shared like the SFT plan (data/prescan.py).

`scan_pairs` plans every line of every annotation file with a PreferenceEncoder into packed int64 arrays (a few
integers per usable pair, no Python object per line) plus the list of bad lines (`file:line`, reason, detail).
As the SFT scan, the files are cut into byte chunks at line ends, planned by forked worker processes
(`data.scan_workers`) and joined in file order.

`cached_scan` keeps that result under `<cache_dir>/pair_plans/<key>/` so it is computed once per machine and data
version, not once per rank and per run: an exclusive file lock on the key decides who scans (the first process
scans and writes, the ranks of the node and the next runs wait, then load it), and the directory is written under
a temporary name and renamed, so it appears complete or not at all. The key hashes what decides the scan except
the annotation contents: this code and the encoder's (templates, tiling, image headers), the tokenizer, template,
system message, max_seq_length, tile settings and each dataset's name, annotation path, media root and tile
budget. The annotation contents are checked as for the SFT plan: the manifest keeps each file's stat identity and
content fingerprint; a changed stat with changed bytes means a new scan. `data.on_error` does not enter the key:
the scan keeps every problem, and the dataset decides what they mean.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from internvl_exp.code_version import source_digest
from internvl_exp.data.prescan import (
    MAX_CHUNK,
    MIN_CHUNK,
    PLAN_SETTINGS,
    ScanWorkerError,
    _fresh,
    _init_worker,
    _locked,
    available_cores,
    chunk_file,
    file_fingerprint,
    publish,
    snapshot,
    tokenizer_fingerprint,
)
from internvl_exp.data.sources import DatasetEntry

log = logging.getLogger(__name__)

# Per usable pair: where to re-read it, both lengths, both supervised counts, its tiles and images.
ROW_FIELDS = ("dataset", "line_no", "offset", "nbytes", "chosen_length", "rejected_length", "chosen_supervised",
              "rejected_supervised", "tiles", "images")


@dataclass
class PairScan:
    rows: dict[str, np.ndarray]  # ROW_FIELDS -> int64 array, one entry per usable pair, in file order
    problems: list[dict[str, Any]]  # per bad line: dataset (index), line_no, reason, detail (too_long included)

    def skipped(self) -> Counter:
        return Counter(p["reason"] for p in self.problems)

    def too_long(self, entries: Sequence[DatasetEntry]) -> Counter:
        return Counter(entries[p["dataset"]].name for p in self.problems if p["reason"] == "too_long")


_STATE: dict[str, Any] = {}  # set in the parent before the fork: the workers inherit the encoder and tokenizer


def _scan_chunk(task: tuple[int, int, int, int]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Plan the lines of one byte chunk [start, end) of dataset d's annotation, whose first line is `first_line`."""
    from internvl_exp.data.preference import PairSkip

    d, start, end, first_line = task
    encoder, entry = _STATE["encoder"], _STATE["entries"][d]
    with open(entry.annotation, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    cols = {k: array("q") for k in ROW_FIELDS}
    problems: list[dict[str, Any]] = []
    pos = 0
    for k, raw in enumerate(lines):
        offset = start + pos
        has_newline = k < len(lines) - 1 or data.endswith(b"\n")
        pos += len(raw) + 1
        if not raw.strip():
            continue
        line_no = first_line + k
        try:
            pair = encoder.plan(entry, raw.decode("utf-8"))
        except UnicodeDecodeError:
            problems.append({"dataset": d, "line_no": line_no, "reason": "invalid_json", "detail": "not UTF-8 text"})
            continue
        except PairSkip as e:
            problems.append({"dataset": d, "line_no": line_no, "reason": e.reason, "detail": e.detail})
            continue
        for key, value in zip(ROW_FIELDS, (d, line_no, offset, len(raw) + has_newline, pair.lengths[0],
                                           pair.lengths[1], pair.supervised[0], pair.supervised[1], sum(pair.tiles),
                                           len(pair.images))):
            cols[key].append(value)
    return {k: np.frombuffer(v, dtype=np.int64).copy() if len(v) else np.zeros(0, np.int64)
            for k, v in cols.items()}, problems


def _run(tasks: list, workers: int) -> list:
    """The chunks' results in task order: in this process for one worker, else in forked worker processes (as the
    SFT scan: the encoder and tokenizer are shared by the fork, not pickled; a worker that dies stops the scan)."""
    if workers <= 1 or len(tasks) <= 1:
        return [_scan_chunk(t) for t in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("fork"),
                               initializer=_init_worker, initargs=(os.getpid(),))
    try:
        return list(pool.map(_scan_chunk, tasks))
    except BrokenProcessPool:
        raise ScanWorkerError("a preference-data scan worker process died (often the out-of-memory killer); set "
                              "data.scan_workers lower (1 scans in the main process) and run again") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def scan_pairs(entries: Sequence[DatasetEntry], encoder: Any, workers: int | None = 1,
               chunk_bytes: int | None = None) -> PairScan:
    """Plan every line (no cache): the usable pairs' rows and every bad line, in file order. The files are cut
    into byte chunks at line ends and planned by `workers` processes (None: every core); the result does not
    depend on the number of workers or the chunk size."""
    entries = list(entries)
    workers = workers or available_cores()
    if chunk_bytes is None:
        total = sum(e.annotation.stat().st_size for e in entries)
        chunk_bytes = int(min(MAX_CHUNK, max(MIN_CHUNK, total / max(1, workers * 8))))
    tasks = [(d, start, end, first) for d, e in enumerate(entries)
             for start, end, first in chunk_file(e.annotation, chunk_bytes)[0]]
    _STATE.update(encoder=encoder, entries=entries)
    try:
        parts = _run(tasks, workers)
    finally:
        _STATE.clear()
    rows = {k: np.concatenate([p[0][k] for p in parts]) if parts else np.zeros(0, np.int64) for k in ROW_FIELDS}
    return PairScan(rows, [q for p in parts for q in p[1]])


def _code_version() -> str:
    """The modules that decide a pair's plan: editing any of them invalidates cached scans."""
    return source_digest(*(f"internvl_exp.data.{m}" for m in ("image_header", "preference", "sources", "templates",
                                                               "tiling", "token_count")), __name__)


def scan_key(entries: Sequence[DatasetEntry], encoder: Any) -> str:
    spec = {
        "code": _code_version(),
        "tokenizer": tokenizer_fingerprint(encoder.tokenizer),
        "template": encoder.template,
        "system_message": encoder.system_message,
        "max_seq_length": encoder.max_seq_length,
        "settings": {k: v for k, v in asdict(encoder.settings).items() if k in PLAN_SETTINGS},
        "datasets": [[e.name, str(e.annotation.resolve()), str(e.root.resolve()), e.max_dynamic_patch] for e in entries],
    }
    return hashlib.blake2b(json.dumps(spec, sort_keys=True).encode(), digest_size=16).hexdigest()


def _save(scan: PairScan, directory: Path) -> None:
    directory.mkdir(parents=True)
    np.savez(directory / "rows.npz", **scan.rows)
    (directory / "problems.json").write_text(json.dumps(scan.problems, ensure_ascii=False))


def _load(directory: Path) -> PairScan:
    with np.load(directory / "rows.npz") as z:
        rows = {k: z[k] for k in ROW_FIELDS}
    return PairScan(rows, json.loads((directory / "problems.json").read_text()))


def cached_scan(entries: Sequence[DatasetEntry], encoder: Any, cache_dir: str | Path | None,
                workers: int | None = 1) -> tuple[PairScan, str]:
    """The scan, and where it came from: "scan" (no cache dir), "cache-miss" (scanned, then cached) or
    "cache-hit" (loaded; another process or an earlier run scanned it)."""
    entries = list(entries)
    if cache_dir is None:
        return scan_pairs(entries, encoder, workers), "scan"
    root = Path(cache_dir) / "pair_plans"
    key = scan_key(entries, encoder)
    directory = root / key
    with _locked(root / f"{key}.lock"):
        started = time.perf_counter()
        if _fresh(directory, entries):
            scan = _load(directory)
            log.info("preference data: cache hit, %d pairs loaded from %s in %.2f s", len(scan.rows["dataset"]),
                     directory, time.perf_counter() - started)
            return scan, "cache-hit"
        # Stats and fingerprints before the scan: a file edited during the scan then fails the next freshness check.
        stats = snapshot(entries)
        fingerprints = [file_fingerprint(e.annotation) for e in entries]
        scan = scan_pairs(entries, encoder, workers)
        log.info("preference data: scanned %d line(s) in %.2f s", len(scan.rows["dataset"]) + len(scan.problems),
                 time.perf_counter() - started)
        publish(root, key, entries, stats, fingerprints, lambda tmp: _save(scan, tmp))
        log.info("preference data: scan cached at %s", directory)
        return scan, "cache-miss"
