"""Complete checkpoints: which `checkpoint-N` folders can be resumed from, and which may be deleted.

A checkpoint is saved into `checkpoints/.partial/checkpoint-N` and renamed to `checkpoints/checkpoint-N` once its
marker file (`checkpoint_complete.json`) is written, so a `checkpoint-N` folder only appears whole. It counts
only once the marker exists (folders of older versions were saved in place). InternVLTrainer writes it
after the Trainer has saved everything (weights, optimizer, scheduler, RNG states of every rank, trainer_state.json
with the step, i.e. the data position) and after a barrier across all ranks, so a process killed during a save
(SIGKILL, OOM, node loss) leaves a folder without the marker, which is skipped with a warning.

Retention (`trainer.save_total_limit`) runs after the marker and counts complete checkpoints only; the newest
complete one is never deleted (HF's own rotation runs before our marker exists and would count the half-saved
folder as "the newest", so InternVLTrainer turns it off and calls `retain` instead).

The marker also lists every file of the checkpoint with its size and BLAKE2b checksum. A resume checks them
(`verify`): a checkpoint with a missing, truncated or changed file is skipped with a warning naming the file,
and the next older complete one is used instead. Sizes are checked everywhere (free); checksums are read once
per process (`verify(..., checksums=True)`), by the launcher and rank 0, several files at a time.

Light: standard library only (the Hydra callback lists checkpoints before torch is imported).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from internvl_exp.errors import UserError

log = logging.getLogger(__name__)

MARKER = "checkpoint_complete.json"
PREFIX = "checkpoint"
STAGING = ".partial"  # checkpoints/.partial/checkpoint-N while it is saved
_STEP = re.compile(rf"^{PREFIX}-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    """N for a folder named `checkpoint-N`, else None."""
    m = _STEP.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


@dataclass(frozen=True)
class Checkpoints:
    """The `checkpoint-N` folders of one directory, oldest first."""

    complete: list[Path]
    incomplete: list[Path]

    @property
    def newest(self) -> Path | None:
        return self.complete[-1] if self.complete else None


def list_checkpoints(folder: Path) -> Checkpoints:
    folder = Path(folder)
    found = sorted(
        (p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None) if folder.is_dir() else [],
        key=lambda p: checkpoint_step(p),
    )
    return Checkpoints([p for p in found if is_complete(p)], [p for p in found if not is_complete(p)])


def warn_incomplete(found: Checkpoints) -> None:
    for p in found.incomplete:
        log.warning("skipping checkpoint %s: it has no %s (its save was interrupted), so it cannot be resumed from",
                    p, MARKER)


def newest_complete(folder: Path, warn: bool = True) -> Path | None:
    """The complete checkpoint with the highest step in `folder` (None if there is none); incomplete ones are
    named in a warning."""
    found = list_checkpoints(folder)
    if warn:
        warn_incomplete(found)
    return found.newest


_CHUNK = 8 << 20
# Files hashed at once: hashlib releases the GIL on large buffers, so threads read and hash in parallel.
_HASH_THREADS = max(1, min(8, os.cpu_count() or 1))


def file_checksum(path: Path) -> str:
    """BLAKE2b (128-bit digest) of a file, read in 8 MiB chunks (never the whole file in memory)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_names(path: Path) -> list[str]:
    """Every file under `path` but the marker, as sorted relative paths."""
    path = Path(path)
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.is_file() and p.name not in (MARKER, f".{MARKER}.tmp"))


def manifest(path: Path, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", "blake2b"}} for `names` (default: every file under `path` but the marker).
    InternVLTrainer gives each rank its share of a checkpoint's files, so large checkpoints hash in parallel."""
    path = Path(path)
    names = file_names(path) if names is None else names
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        sums = list(pool.map(lambda n: file_checksum(path / n), names))
    return {n: {"size": (path / n).stat().st_size, "blake2b": c} for n, c in zip(names, sums)}


_verified: dict[tuple[str, int], str | None] = {}  # (marker path, its mtime_ns) -> verify's answer


def verify(path: Path, checksums: bool = True) -> str | None:
    """None when every file the marker lists is there with its size (and checksum); else what is wrong, naming
    the file. A marker without a file list (written before the list existed) is trusted as it is. The answer
    with checksums is kept per process (the launcher plans twice)."""
    path = Path(path)
    marker = path / MARKER
    try:
        key = (str(marker.resolve()), marker.stat().st_mtime_ns)
        files = read_marker(path).get("files")
    except (OSError, ValueError) as e:
        return f"{marker} cannot be read ({e})"
    if files is None:
        return None
    if checksums and key in _verified:
        return _verified[key]
    problem = None
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            problem = f"{f} is missing"
        elif f.stat().st_size != want["size"]:
            problem = f"{f} has {f.stat().st_size} bytes, {want['size']} were saved (truncated or rewritten)"
        if problem:
            return problem
    if checksums:
        names = list(files)
        with ThreadPoolExecutor(_HASH_THREADS) as pool:
            sums = list(pool.map(lambda n: file_checksum(path / n), names))
        bad = [n for n, c in zip(names, sums) if c != files[n]["blake2b"]]
        problem = f"{path / bad[0]} does not match its checksum (its bytes changed after the save)" if bad else None
        _verified[key] = problem
    return problem


def newest_verified(found: Checkpoints, checksums: bool = True, warn: bool = True) -> Path | None:
    """The newest complete checkpoint whose files pass `verify`; each newer one that fails is named in a
    warning (with its file) and skipped."""
    for candidate in reversed(found.complete):
        problem = verify(candidate, checksums)
        if problem is None:
            return candidate
        if warn:
            log.warning("skipping checkpoint %s: %s; falling back to the next older complete checkpoint",
                        candidate, problem)
    return None


def write_marker(path: Path, info: dict[str, Any], files: dict[str, dict[str, Any]] | None = None) -> None:
    """Mark `path` complete, with every file's size and checksum (`files`, else computed here): written last,
    atomically (rename), and flushed so it never precedes the files."""
    path = Path(path)
    info = {**info, "files": manifest(path) if files is None else files}
    tmp = path / f".{MARKER}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path / MARKER)


SUMMARY = "run_summary.json"
RUN_CONFIG = "run_config.yaml"


def write_extras(folder: Path, summary: dict[str, Any], config: Path) -> None:
    """Our files in a checkpoint, before its marker: the run's summaries so far (SUMMARY) and the config the run
    was trained with (RUN_CONFIG, a copy of the run directory's `config`; a resume compares against it)."""
    folder = Path(folder)
    (folder / SUMMARY).write_text(json.dumps(summary, indent=1))
    if config.is_file():
        shutil.copyfile(config, folder / RUN_CONFIG)


def read_extras(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}  # a checkpoint from before the summaries were saved: the summaries cover this attempt only


def move_into_place(staged: Path, final: Path) -> None:
    """Rename a complete (marked) folder to its final name, replacing what is there (an older save of the same
    step, e.g. a damaged one), and make the rename durable."""
    if final.exists():
        shutil.rmtree(final)
    os.rename(staged, final)
    try:
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def read_marker(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / MARKER).read_text())


def retain(folder: Path, limit: int | None, protect: Iterable[Path | str | None] = ()) -> list[Path]:
    """Keep the newest `limit` complete checkpoints (and those in `protect`); delete older complete ones and every
    incomplete one older than the newest complete (it can never be resumed from). The newest complete checkpoint
    always stays. No limit (None or <= 0): delete nothing. Returns what was deleted. Main process only."""
    if limit is None or limit <= 0:
        return []
    found = list_checkpoints(folder)
    if not found.complete:
        return []
    keep = set(found.complete[-max(limit, 1):])
    keep |= {Path(p).resolve() for p in protect if p} & {p.resolve() for p in found.complete}
    keep = {p.resolve() for p in keep}
    newest_step = checkpoint_step(found.complete[-1])
    doomed = [p for p in found.complete if p.resolve() not in keep]
    doomed += [p for p in found.incomplete if checkpoint_step(p) < newest_step]
    for p in doomed:
        log.info("retention (trainer.save_total_limit=%d): deleting %s", limit, p)
        shutil.rmtree(p, ignore_errors=True)
    return doomed


class SaveFailed(UserError):
    """Writing a checkpoint or final/ failed for a reason outside the program (full disk, read-only folder)."""


# What the OS (or torch / safetensors, which wrap its error in their own) says when a write cannot happen, and
# what to do about it.
_IO_REASONS = (
    (("no space left", "storagefull", "enospc", "errno 28", "disk quota", "errno 122"), "the disk is full",
     "free space on it (or point paths.output_dir at another disk)"),
    (("file too large", "filetoolarge", "errno 27"), "a file hit the size limit (ulimit -f or the filesystem's)",
     "raise the limit (ulimit -f unlimited) or point paths.output_dir at another filesystem"),
    (("read-only file system", "readonly", "errno 30"), "the folder is on a read-only filesystem",
     "point paths.output_dir at a writable folder"),
    (("permission denied", "permissiondenied", "errno 13", "operation not permitted"), "the folder is not writable",
     "fix its permissions or point paths.output_dir at a writable folder"),
    (("file write failed", "input/output error", "errno 5"), "the write failed", "check the disk"),
)


def io_reason(error: BaseException) -> str | None:
    """Why a write failed, when `error` (or what caused it) is an I/O failure; None for anything else (a bug)."""
    seen: BaseException | None = error
    texts = []
    while seen is not None and len(texts) < 8:
        texts.append(f"{type(seen).__name__} {seen}".lower())
        seen = seen.__cause__ or seen.__context__
    text = " ".join(texts)
    for needles, reason, action in _IO_REASONS:
        if any(n in text for n in needles):
            return f"{reason}; {action}"
    return None


@contextmanager
def save_errors(folder: Path, what: str) -> Iterator[None]:
    """Turn an I/O failure while saving `what` into `folder` into one line: the file or folder, what happened,
    what to do (the traceback still goes to train.log). The folder is left without its marker, so it is never
    resumed from."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        reason = io_reason(e)
        if reason is None:
            raise
        name = getattr(e, "filename", None) or folder
        try:
            free = f"; {shutil.disk_usage(_existing(Path(folder))).free / 2**30:.1f} GiB free there"
        except OSError:
            free = ""
        detail = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise SaveFailed(f"could not save {what} to {name} ({detail}{free}): {reason}, then re-run the same "
                         "command: it resumes from the newest complete checkpoint (this partial save is never "
                         "used)") from e


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
