"""Keep secrets out of everything a run saves.

A secret is the value of an environment variable whose name contains KEY, TOKEN, SECRET or PASSWORD
(any case). Every text we write (config, overrides, provenance, logs, metrics, directory names) goes
through `scrub`; `scrub_tree` is the safety net run over a finished run or sweep directory, for files
written by code we do not control (wandb's metadata and console capture).

Values shorter than `MIN_SECRET_LENGTH` or that are plain words/numbers (`TOKENIZERS_PARALLELISM=false`)
are not treated as secrets: redacting them would corrupt ordinary text everywhere.
Light module: standard library only (it is imported by the logging config of every job).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
MIN_SECRET_LENGTH = 6
# Safe inside YAML and JSON scalars (a leading `*` would be a YAML alias).
REDACTED = "<REDACTED>"
_NOT_SECRETS = {"true", "false", "yes", "no", "none", "null", "offline", "online", "disabled", "dryrun"}
# Model weights and Trainer checkpoints are written from tensors, never from text we handle.
SKIP_DIRS = ("checkpoints", "final")
MAX_SCAN_BYTES = 64 * 1024 * 1024


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-named environment variables, longest first (so overlapping values scrub fully)."""
    env = os.environ if environ is None else environ
    values = set()
    for name, value in env.items():
        v = value.strip()
        if not is_secret_name(name) or len(v) < MIN_SECRET_LENGTH:
            continue
        if v.lower() in _NOT_SECRETS or re.fullmatch(r"[0-9.+-]+", v):
            continue
        values.add(v)
    return sorted(values, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every secret value replaced by REDACTED."""
    for s in secret_values() if secrets is None else secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


class ScrubFilter(logging.Filter):
    """A logging filter that removes secrets from the message and the traceback of every record.

    Attached to the handlers in conf/hydra/default.yaml, so train.log and the console never carry a secret.
    """

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.secrets = secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        record.msg, record.args = scrub(message, self.secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        return True


def scrub_tree(root: Path, secrets: Iterable[str] | None = None) -> list[Path]:
    """Redact secret values from every file under `root` (except weights); return the files changed.

    Text files get REDACTED; binary files (wandb's record log) get a same-length mask so their framing
    stays intact. Directory and file names are checked too (renamed when they hold a secret).
    """
    secrets = list(secret_values() if secrets is None else secrets)
    changed: list[Path] = []
    if not secrets or not root.exists():
        return changed
    encoded = [s.encode() for s in secrets]
    for dirpath, dirnames, filenames in os.walk(root, topdown=True):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for fname in filenames:
            path = Path(dirpath) / fname
            if path.is_symlink() or path.stat().st_size > MAX_SCAN_BYTES:
                continue
            data = path.read_bytes()
            if not any(e in data for e in encoded):
                continue
            try:
                text = data.decode("utf-8")
                new = scrub(text, secrets).encode()
            except UnicodeDecodeError:
                new = data
                for e in encoded:
                    new = new.replace(e, b"*" * len(e))
            path.write_bytes(new)
            changed.append(path)
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # deepest first
        if any(s in path.name for s in secrets):
            target = path.with_name(scrub(path.name, secrets))
            path.rename(target)
            changed.append(target)
    return changed
