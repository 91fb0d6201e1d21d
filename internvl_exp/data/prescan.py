"""The pre-flight scan at scale: parallel worker processes, and a plan cache shared by every process of a machine.

`build_plan` plans every line of every annotation file (planner.py) into a `Plan` (plan.py). Files are cut
into byte chunks at line ends; worker processes (`data.scan_workers`, forked so the tokenizer is shared)
read and plan their chunks by byte offset; the parent joins the results in file order, so the plan and the
problem list do not depend on the number of workers. A worker that dies or stalls stops the scan with
`ScanWorkerError` instead of a hang, and workers die with their parent.

The plan is cached under `<cache_dir>/data_plans/<key>/`, where the key hashes everything that decides it
except the annotation contents: the planner's code, the tokenizer (its whole serialised vocabulary,
merges and added tokens), the template and system message, the image settings, max_seq_length, the
length policy, the seed (it draws video frame counts), and each dataset's name, annotation path, media root
and tile budget. Each annotation file's content fingerprint (BLAKE2b of its bytes) is stored in the
cache's manifest with the file's stat identity: an unchanged stat (size, mtime, ctime, inode) means an
unchanged file (every write updates ctime); a changed stat is checked against the content fingerprint,
and a changed content means a new scan. A stale plan is never used.

Across processes (the ranks of a node, the next run, the jobs of a sweep) an exclusive file lock on the
key decides who scans: the first process scans and writes the cache; the others wait, then load it.
Media files are not re-checked on a cache hit: a file that changed since the scan fails (or mismatches its
planned tiles) when it is loaded, and follows `data.on_error` there.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from internvl_exp.code_version import source_digest
from internvl_exp.data.plan import ROW_FIELDS, Plan
from internvl_exp.data.planner import Planner
from internvl_exp.data.report import Problem
from internvl_exp.data.sources import DatasetEntry, RawLine
from internvl_exp.data.templates import count_turns, refresh_token_counts
from internvl_exp.errors import UserError
from internvl_exp.redact import scrub

log = logging.getLogger(__name__)

PROGRESS_MIN_LINES = 5000  # about a second of scanning: below that a bar is noise
MIN_CHUNK, MAX_CHUNK = 256 << 10, 8 << 20  # bytes of annotation per worker task
# Only these settings decide the plan (the resize kernel, normalisation and frame choice act at load time).
PLAN_SETTINGS = ("tile_size", "tokens_per_tile", "min_dynamic_patch", "max_dynamic_patch", "use_thumbnail",
                 "min_num_frame", "max_num_frame", "exif_transpose")  # a transposed image has other tiles


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- chunks -------------------------------------------------------------------------------------------

def chunk_file(path: Path, chunk_bytes: int) -> tuple[list[tuple[int, int, int]], int, str]:
    """[(start, end, first_line_no)] cut at line ends, the number of lines, and the content fingerprint
    (computed on the same read, so fingerprinting costs no extra pass over the file)."""
    chunks, line_no, start = [], 1, 0
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            if not block:
                break
            if len(block) == chunk_bytes and not block.endswith(b"\n"):
                block += f.readline()
            digest.update(block)
            chunks.append((start, start + len(block), line_no))
            line_no += block.count(b"\n")
            start += len(block)
    n_lines = line_no - 1 + (0 if not chunks or _ends_with_newline(path) else 1)
    return chunks, n_lines, digest.hexdigest()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def file_fingerprint(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


# --- workers ------------------------------------------------------------------------------------------

_ROW_ORDER = ("dataset", "line_no", "offset", "nbytes", "length", "supervised", "per_image", "n_images", "tiles_at",
              "frames", "video_first", "video_count", "turns", "truncated")
assert set(_ROW_ORDER) == set(ROW_FIELDS)
_STATE: dict[str, Any] = {}  # set in the parent before the fork: the workers inherit the planner and tokenizer
STALL_SECONDS = 900  # no chunk finished for this long: a worker is stuck (a chunk takes seconds)


def _scan_chunk(task: tuple[int, int, int, int]) -> dict[str, Any]:
    """Plan the lines of one chunk. Rows carry absolute line numbers and offsets; tiles_at is chunk-local."""
    d, start, end, first_line = task
    planner: Planner = _STATE["planner"]
    entry: DatasetEntry = _STATE["entries"][d]
    refresh_token_counts(planner.tokenizer)  # memoised counts made before tokens were added are dropped
    with open(entry.annotation, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    rows: list[tuple] = []  # in _ROW_ORDER
    tiles: list[int] = []
    problems: list[Problem] = []
    truncated = rotated = 0
    pos = 0
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    for k, raw in enumerate(lines):
        offset, pos = start + pos, pos + len(raw) + 1
        if not raw.strip():
            continue
        line_no = first_line + k
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(Problem(f"{entry.annotation}:{line_no}", "invalid_json", f"not valid UTF-8 (byte {e.start})",
                                    entry.name))
            continue
        sample, reason, detail = planner.plan(entry, RawLine(entry.name, entry.annotation, line_no, text))
        if sample is None:
            problems.append(Problem(f"{entry.annotation}:{line_no}", reason, detail, entry.name))
            continue
        truncated += sample.truncated
        rotated += sample.rotated
        video = sample.video
        rows.append((d, line_no, offset, len(raw), sample.length, sample.supervised_tokens, sample.max_tiles_per_image,
                     0 if video else len(sample.num_tiles), len(tiles), len(sample.num_tiles) if video else 0,
                     video.info.first if video else 0, video.info.count if video else 0, len(sample.conversations),
                     sample.truncated))
        if not video:
            tiles += sample.num_tiles
    columns = list(zip(*rows)) if rows else [()] * len(_ROW_ORDER)
    arrays = {name: np.asarray(values, dtype=ROW_FIELDS[name]) for name, values in zip(_ROW_ORDER, columns)}
    return {"rows": arrays, "tiles": np.asarray(tiles, dtype=np.uint8), "problems": problems,
            "truncated": truncated, "rotated": rotated, "lines": len(lines)}


def _join(parts: list[dict[str, Any]]) -> Plan:
    tiles_base, tiles = 0, []
    for p in parts:
        p["rows"]["tiles_at"] += tiles_base
        tiles_base += len(p["tiles"])
        tiles.append(p["tiles"])
    rows = {name: np.concatenate([p["rows"][name] for p in parts]) if parts else np.empty(0, ROW_FIELDS[name])
            for name in ROW_FIELDS}
    return Plan(rows, np.concatenate(tiles) if tiles else np.empty(0, np.uint8),
                [q for p in parts for q in p["problems"]], sum(p["truncated"] for p in parts),
                sum(p["rotated"] for p in parts))


def scan_files(entries: list[DatasetEntry], planner: Planner, workers: int) -> tuple[Plan, dict[str, str]]:
    """Plan every line of every dataset with `workers` processes; also returns each file's fingerprint."""
    total_bytes = sum(e.annotation.stat().st_size for e in entries)
    chunk = int(min(MAX_CHUNK, max(MIN_CHUNK, total_bytes / max(1, workers * 8))))
    tasks, n_lines, fingerprints = [], 0, {}
    for d, entry in enumerate(entries):
        chunks, n, fp = chunk_file(entry.annotation, chunk)
        fingerprints[str(entry.annotation.resolve())] = fp
        tasks += [(d, s, e, first) for s, e, first in chunks]
        n_lines += n
    # A bar only where the wait is noticeable (and only on a terminal: tqdm's disable=None). Made after the
    # workers are forked (inside _run), so its monitor thread is not running at the fork.
    parts: list[dict[str, Any]] = []
    progress = None
    try:
        for part in _run(tasks, planner, entries, min(workers, len(tasks))):
            if progress is None:
                progress = tqdm(total=n_lines, desc="pre-flight data scan", unit="line",
                                disable=None if n_lines >= PROGRESS_MIN_LINES else True)
            parts.append(part)
            progress.update(part["lines"])
    finally:
        if progress is not None:
            progress.close()
    return _join(parts), fingerprints


class ScanWorkerError(UserError):
    """A scan worker process died or stalled: the scan stops with this instead of waiting forever."""


def _init_worker(parent: int) -> None:
    """In each forked worker: die with the parent (a killed parent must not leave workers blocked on the task
    queue forever), and count tokens on this one thread."""
    with contextlib.suppress(OSError, AttributeError):  # Linux only: elsewhere the pool's own checks remain
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _run(tasks: list, planner: Planner, entries: list[DatasetEntry], workers: int) -> Iterator[dict[str, Any]]:
    """The chunks' results in task order: in this process for one worker, else in a pool of forked workers."""
    _STATE.update(planner=planner, entries=entries)
    try:
        if workers <= 1:
            yield from map(_scan_chunk, tasks)
            return
        # The token counter built here, once, before the fork: every worker inherits it (its setup compiles
        # regexes of large character classes, ~0.2 s, token_count._byte_level_runs) and the counts of the
        # template's own texts (system message, role headers).
        count_turns([], planner.tokenizer, planner.template, roles_checked=True)
        yield from _run_pool(tasks, workers)
    finally:
        _STATE.clear()


def _run_pool(tasks: list, workers: int) -> Iterator[dict[str, Any]]:
    # fork, inside a ProcessPoolExecutor. fork shares the planner and tokenizer without pickling them or
    # re-importing anything; spawn and forkserver re-run the parent's __main__ and unpickle the tokenizer
    # in every worker, measured at 12-16 s per scan here (docs/data.md), more than a 100k-line scan. The
    # executor forks all its workers before it starts its own thread, and a worker that dies breaks the
    # pool (BrokenProcessPool) instead of leaving the parent waiting for its chunk forever, which is what
    # multiprocessing.Pool does. A worker stuck without dying (a lock copied by the fork) is caught by the
    # stall timeout. Workers are terminated in `finally` whatever happens.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_init_worker,
                               initargs=(os.getpid(),))
    procs: list = []
    done = False
    try:
        futures = [pool.submit(_scan_chunk, t) for t in tasks]  # forks the workers now
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for k, future in enumerate(futures):
            try:
                yield future.result(timeout=STALL_SECONDS)
            except BrokenProcessPool:
                codes = sorted({p.exitcode for p in procs if p.exitcode})
                raise ScanWorkerError(
                    f"a pre-flight scan worker process died (exit code(s) {codes or 'unknown'}; -9 is SIGKILL, often "
                    "the out-of-memory killer); set data.scan_workers lower (1 scans in the main process) and run again"
                ) from None
            except FuturesTimeout:
                raise ScanWorkerError(
                    f"the pre-flight scan made no progress for {STALL_SECONDS} s (chunk {k + 1} of {len(tasks)}); "
                    "a worker is stuck; run again, or set data.scan_workers=1 to scan in the main process"
                ) from None
        done = True
    finally:
        if not done:  # an error or an interrupt: do not wait for the chunks still running
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


# --- cache --------------------------------------------------------------------------------------------

def _code_version() -> str:
    """Hash of the source of every module that decides a plan: editing any of them invalidates old plans."""
    return source_digest(*(f"internvl_exp.data.{m}" for m in ("image_header", "plan", "planner", "sources", "templates",
                                                               "tiling", "token_count", "video")), __name__)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The tokenizer's identity for the cache: its whole serialised form (vocabulary, merges, normaliser,
    added tokens, post-processor) for a fast tokenizer, else its vocabulary; plus how it encodes a probe."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    added = getattr(tokenizer, "get_added_vocab", dict)()
    digest.update(json.dumps(sorted(added.items()), ensure_ascii=False).encode())
    digest.update(json.dumps(tokenizer("a <|im_end|>", add_special_tokens=True)["input_ids"]).encode())
    return digest.hexdigest()


def plan_key(entries: list[DatasetEntry], planner: Planner) -> str:
    s = planner.settings
    spec = {
        "code": _code_version(),
        "tokenizer": tokenizer_fingerprint(planner.tokenizer),
        "template": planner.template,
        "system_message": planner.system_message,
        "max_seq_length": planner.max_seq_length,
        "length_policy": planner.length_policy,
        "seed": planner.seed,
        "settings": {k: v for k, v in asdict(s).items() if k in PLAN_SETTINGS},
        "datasets": [[e.name, str(e.annotation.resolve()), str(e.root.resolve()), e.max_dynamic_patch] for e in entries],
    }
    return hashlib.blake2b(json.dumps(spec, sort_keys=True).encode(), digest_size=16).hexdigest()


def _stat_identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _fresh(directory: Path, entries: list[DatasetEntry]) -> bool:
    """True when the cached plan was made from exactly the current annotation contents."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    files = manifest.get("files")
    if not isinstance(files, list) or len(files) != len(entries):
        return False
    changed = False
    for e, rec in zip(entries, files):  # in dataset order (the plan key covers the paths themselves)
        now = _stat_identity(e.annotation)  # before the bytes are read (`snapshot`)
        if rec["stat"] != now:
            if file_fingerprint(e.annotation) != rec["fingerprint"]:
                return False
            rec["stat"] = now  # touched or copied, same bytes: still valid
            changed = True
    if changed:
        _write_manifest(directory, manifest)
    return True


def snapshot(entries: list[DatasetEntry]) -> list[list[int]]:
    """Each annotation file's stat identity, taken before the scan reads it: a file edited during the scan then
    fails the next freshness check (its stat has changed) instead of passing it with the edited file's stat and
    the fingerprint of what was scanned."""
    return [_stat_identity(e.annotation) for e in entries]


def publish(root: Path, key: str, entries: list[DatasetEntry], stats: list[list[int]], fingerprints: list[str],
            save: Callable[[Path], None]) -> Path:
    """Put a scan's cache entry in place at `root/key` at once (hold `_locked` around it): `save` writes it into
    a temporary directory, the manifest joins it, and it replaces any older entry. The manifest lists each file in
    dataset order with the `snapshot` stat and the fingerprint of the bytes scanned; its path only for a reader,
    and scrubbed: a cache must not keep a secret found in a path (redact.py)."""
    directory = root / key
    tmp = root / f"{key}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    files = [{"path": scrub(str(e.annotation.resolve())), "fingerprint": fingerprint, "stat": stat}
             for e, stat, fingerprint in zip(entries, stats, fingerprints, strict=True)]
    _write_manifest(tmp, {"key": key, "files": files, "created": time.time(), "pid": os.getpid()})
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return directory


def _write_manifest(directory: Path, manifest: dict) -> None:
    tmp = directory / f"manifest.json.{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, directory / "manifest.json")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # blocks while another process scans this plan
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_plan(entries: list[DatasetEntry], planner: Planner, workers: int | None = None,
               cache_dir: str | Path | None = None) -> tuple[Plan, str]:
    """The plan, and where it came from: "scan" (no cache dir), "cache-miss" (scanned, then cached) or "cache-hit"."""
    workers = workers or available_cores()
    if cache_dir is None:
        started = time.perf_counter()
        plan, _ = scan_files(entries, planner, workers)
        _log_scan(plan, workers, time.perf_counter() - started)
        return plan, "scan"
    root = Path(cache_dir) / "data_plans"
    key = plan_key(entries, planner)
    directory = root / key
    with _locked(root / f"{key}.lock"):
        started = time.perf_counter()
        if _fresh(directory, entries):
            plan = Plan.load(directory)
            log.info("data plan: cache hit, %d planned samples loaded from %s in %.2f s", len(plan), directory,
                     time.perf_counter() - started)
            return plan, "cache-hit"
        stats = snapshot(entries)
        plan, fingerprints = scan_files(entries, planner, workers)
        _log_scan(plan, workers, time.perf_counter() - started)
        publish(root, key, entries, stats, [fingerprints[str(e.annotation.resolve())] for e in entries], plan.save)
        log.info("data plan: cached at %s", directory)
        return Plan.load(directory), "cache-miss"


def _log_scan(plan: Plan, workers: int, seconds: float) -> None:
    lines = len(plan) + len(plan.problems)
    log.info("data plan: scanned %d line(s) with %d worker(s) in %.2f s (%.0f lines/s)", lines, workers, seconds,
             lines / max(seconds, 1e-9))
