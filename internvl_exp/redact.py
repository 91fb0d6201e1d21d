"""Keep secrets out of everything a run saves or hands to a tracker.

What counts as a secret:
  1. the value of an environment variable whose name contains KEY, TOKEN, SECRET or PASSWORD (any case);
  2. any match of the run's `secrets` patterns (regular expressions, top-level config key);
  3. any text shaped like a well-known credential (`CREDENTIAL_SHAPES`: sk-…, hf_…, ghp_…, AKIA…, xoxb-…, ...).
Such values are never meant to be in a config: `credential_kind` lets validation refuse them there.

Every text we write or hand over (config, overrides, provenance, logs, metrics, directory names, TrainingArguments
and the DeepSpeed config they carry into DeepSpeed's state files, the data-plan cache's manifest and problem list,
tracker name/group/tags/config) goes through `scrub` / `scrub_value` *before* it is written. `scrub_tree` is
only a safety net run over a finished run or sweep directory for files other code wrote from inputs we do not
control (Hydra's multirun.yaml holds the raw command line); it logs a warning for each file it had to fix.

Values shorter than `MIN_SECRET_LENGTH` or that are plain words/numbers (`TOKENIZERS_PARALLELISM=false`)
are not treated as secrets: redacting them would corrupt ordinary text everywhere.
Light module: standard library only (it is imported by the logging config of every job).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
MIN_SECRET_LENGTH = 6
# Safe inside YAML and JSON scalars (a leading `*` would be a YAML alias).
REDACTED = "<REDACTED>"
_NOT_SECRETS = {"true", "false", "yes", "no", "none", "null", "offline", "online", "disabled", "dryrun"}
# Binary files under these folders (weights, optimizer state, pickled TrainingArguments) are never rewritten:
# masking bytes would corrupt them. What they hold comes from scrubbed inputs.
BINARY_SAFE_DIRS = ("checkpoints", "final")
TEXT_SUFFIXES = (".json", ".txt", ".jinja", ".yaml", ".yml", ".md")  # metadata scanned there
MAX_SCAN_BYTES = 64 * 1024 * 1024

# Credential shapes by issuer prefix. The look-behinds keep ordinary words (`task-…`, `use_hf_hub`) out.
CREDENTIAL_SHAPES: dict[str, str] = {
    "an API key (sk-…)": r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}",
    "a Hugging Face token (hf_…)": r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{20,}",
    "a GitHub token (ghp_…)": r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{20,}",
    "a GitHub token (github_pat_…)": r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{20,}",
    "an AWS access key (AKIA…)": r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])",
    "a Slack token (xox…-)": r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}",
    "a GitLab token (glpat-…)": r"(?<![A-Za-z0-9])glpat-[A-Za-z0-9_-]{20,}",
    "a Google API key (AIza…)": r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{35}",
    "a private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----)?",
}
_CREDENTIAL_RES = [re.compile(p) for p in CREDENTIAL_SHAPES.values()]
# The run's `secrets` patterns (set by `configure` when a job starts; see hydra_callbacks.py and launch/job.py).
_configured: list[re.Pattern[str]] = []


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


def credential_kind(text: str) -> str | None:
    """What credential `text` contains (e.g. "a Hugging Face token (hf_…)"), or None."""
    for kind, regex in zip(CREDENTIAL_SHAPES, _CREDENTIAL_RES):
        if regex.search(text):
            return kind
    return None


def pattern_problems(patterns: Iterable[str]) -> list[str]:
    """Why each `secrets` pattern is unusable (not a regular expression, or matches empty text)."""
    problems = []
    for i, p in enumerate(patterns):
        try:
            regex = re.compile(str(p))
        except re.error as e:
            problems.append(f"secrets[{i}]: not a regular expression ({e}); escape special characters with \\")
            continue
        if regex.fullmatch(""):
            problems.append(f"secrets[{i}]: matches empty text, so it would redact everywhere; make it specific")
    return problems


def configure(patterns: Iterable[str] | None) -> None:
    """Use the run's `secrets` patterns from now on (every scrub, every log filter). Invalid ones are left out
    here; validation reports them."""
    global _configured
    usable = [str(p) for p in patterns or ()]
    bad = set(pattern_problems(usable))
    _configured = [re.compile(p) for i, p in enumerate(usable) if not any(b.startswith(f"secrets[{i}]") for b in bad)]


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every secret value, configured pattern match and credential-shaped string replaced by REDACTED.

    `secrets`: the literal values to remove (default: the secret-named environment variables now).
    """
    for s in secret_values() if secrets is None else secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    for regex in (*_configured, *_CREDENTIAL_RES):
        text = regex.sub(REDACTED, text)
    return text


def scrub_value(value: Any) -> Any:
    """`value` with every string inside it (dicts, lists, tuples; keys too) scrubbed; other values unchanged."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub_value(k): scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_value(v) for v in value)
    return value


def scrub_fields(obj: Any) -> Any:
    """Scrub every text field of a dataclass instance in place (strings inside lists/dicts too); return it.

    Used on TrainingArguments: they are pickled into each checkpoint's training_args.bin and handed to
    TensorBoard, so they must hold no secret whatever their source (config, environment)."""
    import dataclasses

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name, None)
        if isinstance(value, (str, list, tuple, dict)):
            clean = scrub_value(value)
            if clean != value:
                setattr(obj, f.name, clean)
    return obj


def scrub_bytes(data: bytes, secrets: Iterable[str] | None = None) -> bytes:
    """`data` with every secret masked by as many `*` bytes, so binary framing (offsets, lengths) stays intact."""
    values = secret_values() if secrets is None else list(secrets)
    for s in values:
        data = data.replace(s.encode(), b"*" * len(s.encode()))
    for regex in (*_configured, *_CREDENTIAL_RES):
        data = re.sub(regex.pattern.encode(), lambda m: b"*" * len(m.group(0)), data)
    return data


class ScrubFilter(logging.Filter):
    """A logging filter that removes secrets from the message and the traceback of every record.

    Attached to the handlers in conf/hydra/default.yaml, so train.log and the console never carry a secret.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


class ScrubbedStream:
    """A text stream (sys.stdout / sys.stderr) that scrubs every write before passing it on.

    Installed over the streams a tracker's console capture has wrapped (train/reporting/loggers.py), so what it records
    from prints of any library is scrubbed first."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(scrub(text) if isinstance(text, str) else text)
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding, fileno, ...
        return getattr(self._stream, name)


def _in_weights_dir(root: Path, path: Path) -> bool:
    return any(part in BINARY_SAFE_DIRS for part in path.relative_to(root).parts[:-1])


def scrub_tree(root: Path, secrets: Iterable[str] | None = None) -> list[Path]:
    """Redact secrets from every file under `root`; return the files changed (each is also logged).

    Text files get REDACTED; binary files (wandb's record log) get a same-length mask so their framing
    stays intact, except under checkpoints/ and final/ (weights, pickles: never rewritten). Directory and
    file names are checked too (renamed when they hold a secret).
    """
    values = list(secret_values() if secrets is None else secrets)
    changed: list[Path] = []
    if not root.exists():
        return changed
    for dirpath, _dirnames, filenames in os.walk(root):
        for fname in filenames:
            path = Path(dirpath) / fname
            weights_dir = _in_weights_dir(root, path)
            if path.is_symlink() or path.stat().st_size > MAX_SCAN_BYTES or (
                weights_dir and path.suffix not in TEXT_SUFFIXES
            ):
                continue
            data = path.read_bytes()
            try:
                new = scrub(data.decode("utf-8"), values).encode()
            except UnicodeDecodeError:
                if weights_dir:
                    continue
                new = scrub_bytes(data, values)
            if new != data:
                path.write_bytes(new)
                changed.append(path)
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # deepest first
        name = scrub(path.name, values)
        if name != path.name:
            target = path.with_name(name)
            path.rename(target)
            changed.append(target)
    for path in changed:
        logging.getLogger(__name__).warning("removed a secret from %s after it was written", path)
    return changed
