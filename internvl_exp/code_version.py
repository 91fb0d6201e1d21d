"""The version of the code behind a cached result: a hash of the source files of the modules that decide it.

Caches (the SFT data plan, the pair scan, stored reference log-probs) key on it, so editing any of those modules
invalidates what they stored. The files are found without importing the modules (some import torch).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def source_digest(*modules: str) -> str:
    """blake2b-128 of the named modules' source files, in the order given."""
    digest = hashlib.blake2b(digest_size=16)
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"no source for module {name}")
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()
