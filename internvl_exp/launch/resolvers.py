"""OmegaConf resolvers that name run and sweep-job directories (used by conf/hydra/default.yaml).

    ${safe_name:${run_name}}                 one path component, safe characters only
    ${job_dirname:${hydra.overrides.task}}   a sweep job's overrides as `k=v,k2=v2`, minus seed and path-like keys

Names keep only `[A-Za-z0-9._=,+-]` (any run of other characters becomes one `_`, so `/` never nests), never
carry a secret (see redact.py), and are capped in length (a short hash keeps long ones unique).
Light module: no torch.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable

from internvl_exp.redact import scrub

MAX_NAME = 200  # + the job number stays well under the 255-byte file-name limit
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
# Keys that identify the run rather than its hyperparameters, or that name files and folders.
EXCLUDED_KEYS = {"seed", "run_name", "sweep_name", "experiment_name", "hparams_search", "optimized_metric", "secrets",
                 "resume"}
EXCLUDED_PREFIXES = ("paths.", "hydra.", "logger.")
PATH_LIKE_SUFFIXES = ("path", "dir", "_file", "root", "_json")


def safe_name(value: Any) -> str:
    """One safe path component: secrets removed, unsafe characters replaced, length capped."""
    text = re.sub(r"_{2,}", "_", _UNSAFE.sub("_", scrub(str(value)))).strip("._") or "run"
    if len(text) > MAX_NAME:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        text = f"{text[: MAX_NAME - 9]}-{digest}"
    return text


def is_path_like(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return key in EXCLUDED_KEYS or key.startswith(EXCLUDED_PREFIXES) or leaf.endswith(PATH_LIKE_SUFFIXES)


def job_dirname(overrides: Iterable[str]) -> str:
    """`k=v,k2=v2` from a job's command-line overrides (sorted by key), excluding seed and path-like keys."""
    items: list[tuple[str, str]] = []
    for override in overrides:
        key, sep, value = str(override).lstrip("+~").partition("=")
        if is_path_like(key):
            continue
        items.append((key, value if sep else "deleted"))
    text = ",".join(f"{k}={v}" for k, v in sorted(items))
    return safe_name(text) if text else "job"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("safe_name", safe_name, replace=True)
    OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
