"""End to end: the real launch.py in a subprocess, and an in-process run whose final/ is reloaded."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import compose, run_launch

pytestmark = pytest.mark.slow  # the demo run end to end


def test_demo_run_end_to_end(tmp_path, demo_dir):
    """The default command (`python launch.py`, the quick demo) trains to below half its initial loss."""
    res = run_launch([f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}", "run_name=demo"])
    assert res.returncode == 0, res.stderr[-4000:]
    run_dir = tmp_path / "default" / "demo"
    assert f"Run directory: {run_dir}" in res.stdout
    for name in ("config.yaml", "overrides.yaml", "train.log", "metrics.json", "final/config.json",
                 "final/model.safetensors", "final/processor_config.json", "final/tokenizer.json"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["final_loss"] < metrics["initial_loss"] / 2, metrics
    # Trained by epochs (no step cap): 192 demo samples / 4 per step = 48 steps an epoch, 3 epochs.
    assert metrics["epochs"] == 3 and metrics["steps"] == 144
    assert metrics["trainable_parameters"]["vision"]["trainable"] == 0
    assert metrics["trainable_parameters"]["llm"]["trainable"] > 0
    assert metrics["data"]["samples"] == 192
    log = (run_dir / "train.log").read_text()
    assert "run finished" in log
    # The demo evaluates on its eval split during training (every trainer.eval_steps=50, and the final model),
    # and a sweep of it would optimise the final eval loss.
    assert metrics["eval_data"]["samples"] == 64
    history = metrics["eval_loss"]
    assert [h["step"] for h in history] == [50, 100, 144]
    assert history[-1]["value"] < history[0]["value"]  # eval loss falls
    assert metrics["final_eval_loss"] == history[-1]["value"]
    assert metrics["best_eval_loss"] == min(h["value"] for h in history)
    assert metrics["optimized_metric"] == "final_eval_loss" and metrics["objective"] == metrics["final_eval_loss"]
    assert re.search(r"eval at step \d+: loss \d", res.stdout)  # on the console with the training lines


def _batch(dataset, collator, n=4):
    return collator([dataset[i] for i in range(n)])


def test_reloaded_final_reproduces_training_loss(tmp_path, demo_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from internvl_exp.data.collator import Collator
    from internvl_exp.data.from_config import build_from_config
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.run import run

    cfg = compose(["trainer.max_steps=5", "data=mix", "freeze=full", "run_name=reload"], tmp_path, demo_dir)
    rd = RunDir(tmp_path / "run")
    captured = {}

    import internvl_exp.train.recipe.run as run_mod

    original = run_mod.InternVLTrainer

    class Capturing(original):  # keep a handle on the trained model (the real Trainer, unchanged)
        def train(self, *a, **k):
            out = super().train(*a, **k)
            captured["model"] = self.model
            return out

    run_mod.InternVLTrainer = Capturing
    try:
        metrics = run(cfg, rd)
    finally:
        run_mod.InternVLTrainer = original
    assert metrics["steps"] == 5

    processor = AutoProcessor.from_pretrained(rd.final)
    reloaded = AutoModelForImageTextToText.from_pretrained(rd.final)
    trained = captured["model"]
    dataset, _ = build_from_config(cfg, processor.tokenizer, 16)
    batch = _batch(dataset, Collator(processor.tokenizer.pad_token_id))
    assert "pixel_values" in batch
    trained.eval(), reloaded.eval()
    with torch.no_grad():
        a = trained(**batch).loss
        b = reloaded(**batch).loss
    assert torch.isfinite(a)
    assert torch.allclose(a, b, atol=1e-6), (a, b)
