"""ensure_converted: convert an original checkpoint once, keyed by its content, shared by every process.

The key hashes what identifies the weights without reading them all: config.json, the tokenizer and generation
files, the converter version, and per safetensors file its name, size, modification time, header (names, shapes,
dtypes, byte offsets), the first and last 64 KiB of its data, and the Hub's content hash where the file is a Hub
cache blob (its name) or a `hf download --local-dir` file (its .metadata). That is a few MB at 150 GB; a changed
config or a rewritten or re-uploaded shard re-converts.
A conversion is written to a temporary sibling and renamed into place after verification, so a directory named
by a key is always complete; a file lock makes concurrent ranks convert once while the others wait.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path

from internvl_exp.models.convert.checkpoint import convert_checkpoint
from internvl_exp.models.convert.source import open_source, read_header, shard_files

log = logging.getLogger(__name__)

# Bump when the converter's output for the same source changes, so old cache entries are not reused.
CONVERTER_VERSION = "1"
KEYED_FILES = ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json", "generation_config.json", "model.safetensors.index.json")
LOCK_LOG_EVERY_S = 30.0
SAMPLE_BYTES = 64 * 1024


def source_fingerprint(src: Path) -> str:
    h = hashlib.sha256(f"internvl-exp converter {CONVERTER_VERSION}\n".encode())
    for name in KEYED_FILES:
        f = src / name
        if f.is_file():
            data = f.read_bytes()
            h.update(f"{name} {len(data)}\n".encode())
            h.update(data)
    for shard in shard_files(src):
        raw, _ = read_header(shard)
        stat = shard.stat()
        h.update(f"{shard.name} {stat.st_size} {stat.st_mtime_ns} {shard.resolve().name}\n".encode())
        h.update(raw)
        with open(shard, "rb") as f:
            f.seek(8 + len(raw))
            h.update(f.read(SAMPLE_BYTES))
            f.seek(max(8 + len(raw), stat.st_size - SAMPLE_BYTES))
            h.update(f.read(SAMPLE_BYTES))
        meta = src / ".cache" / "huggingface" / "download" / f"{shard.name}.metadata"
        if meta.is_file():
            h.update(meta.read_bytes())
    return h.hexdigest()[:20]


def _clear_partials(root: Path, key: str) -> None:
    """Remove what a killed conversion left (only ever called holding the lock, so nobody is writing them)."""
    for stale in root.glob(f".{key}.partial-*"):
        log.warning("removing %s, left by an interrupted conversion", stale)
        shutil.rmtree(stale, ignore_errors=True)


def ensure_converted(src: Path, cache_dir: Path) -> Path:
    """The native directory for the original checkpoint `src`, converting it into cache_dir/converted/<key>/ on
    first use. Safe to call from every rank at once: one converts, the others wait and reuse the result."""
    from filelock import FileLock, Timeout

    src = Path(src).resolve()
    open_source(src)  # a clear error for a wrong directory before anything is created
    key = source_fingerprint(src)
    root = Path(cache_dir) / "converted"
    dst = root / key
    if dst.is_dir():
        log.info("using converted checkpoint %s for %s (cache hit)", dst, src)
        return dst
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f"{key}.lock"))
    waited = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=LOCK_LOG_EVERY_S)
            break
        except Timeout:
            log.info("waiting for another process converting %s into %s (%.0f s so far)", src, dst,
                     time.monotonic() - waited)
    try:
        if dst.is_dir():
            log.info("using converted checkpoint %s for %s (cache hit, converted by another process)", dst, src)
            return dst
        _clear_partials(root, key)
        log.info("converting original checkpoint %s into %s (first use; later runs reuse it)", src, dst)
        convert_checkpoint(src, dst, show_progress=True)
        return dst
    finally:
        lock.release()
