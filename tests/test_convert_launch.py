"""Each LLM family (and both InternViT kinds) of a synthetic ORIGINAL-layout checkpoint trains a step through
launch.py: found by model.path, converted on first use into the cache, loaded, trained, saved. One multirun, so
the seven families share one process start."""

from __future__ import annotations

import json

import pytest

from conftest import run_launch
from original_checkpoints import FAMILIES, write_original_checkpoint

# The 6B-style ViT (RMSNorm, qk-norm, no qkv bias) on one family; the 300M-style one on the others.
VIT = {family: ("6b" if family == "llama" else "300m") for family in FAMILIES}


@pytest.mark.slow
def test_every_family_trains_a_step_through_launch(tmp_path, demo_dir):
    paths = []
    for family in FAMILIES:
        write_original_checkpoint(tmp_path / family, family, VIT[family], seed=3)
        paths.append(str(tmp_path / family))
    res = run_launch([
        "-m", "model=local", f"model.path={','.join(paths)}", "model.template=internvl2_5", "model.image_size=56",
        "model.dtype=float32", "model.attn_implementation=eager", "trainer.max_steps=1", "trainer.logging_steps=1",
        "trainer.save_final=false", "data.max_seq_length=4096", f"paths.output_dir={tmp_path / 'out'}",
        f"paths.cache_dir={tmp_path / 'cache'}", f"paths.demo_data_dir={demo_dir}", "sweep_name=families",
    ])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    jobs = sorted((tmp_path / "out" / "default" / "multirun" / "families").glob("*_*/metrics.json"))
    assert len(jobs) == len(FAMILIES)
    for path in jobs:
        metrics = json.loads(path.read_text())
        assert metrics["status"] == "completed", (path.parent.name, metrics.get("error"))
        assert metrics["steps"] == 1 and metrics["initial_loss"] > 0
    converted = [p for p in (tmp_path / "cache" / "converted").iterdir() if p.is_dir()]
    assert len(converted) == len(FAMILIES)  # each converted once
