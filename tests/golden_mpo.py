"""Shared set-up of the InternVL MPO golden fixture (tests/fixtures/golden_mpo): converted checkpoints, data."""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = FIXTURES / "golden_mpo" / "qwen2_vit300m"
# The reference model is byte-identical to the original-layout golden checkpoint (config and tokenizer too).
REFERENCE = FIXTURES / "original_layout" / "qwen2_vit300m"


def policy_original(dst: Path) -> Path:
    """An original-layout policy checkpoint: the reference's config/tokenizer with the policy's weights."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in REFERENCE.iterdir():
        if f.name not in ("model.safetensors", "reference.pt"):
            shutil.copy(f, dst / f.name)
    shutil.copy(GOLDEN / "policy_model" / "model.safetensors", dst / "model.safetensors")
    return dst


def converted(which: str, tmp: Path) -> Path:
    """The native (transformers InternVL) directory of the golden 'policy' or 'reference' model."""
    from internvl_exp.models.convert import ensure_converted

    src = REFERENCE if which == "reference" else policy_original(tmp / "policy_original")
    return ensure_converted(src, tmp / "cache")
