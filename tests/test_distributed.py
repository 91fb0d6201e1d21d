"""distributed=torchrun on CPU (gloo), 2 processes: DDP, ZeRO-2 and ZeRO-3 through the real launch.py.

One run per setting, each checked for everything at once (every torchrun start costs ~10-20 s of imports per
process): one run directory, one metrics.json, one wandb run, deepspeed.json, a final/ that from_pretrained
loads, and the first-step loss equal to one process at the same global batch. The runs use data=mix, one
sample per rank and activation checkpointing, the setting that hung before text-only batches kept the vision
path in the graph (train/same_graph.py): finishing at all is part of the test.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_launch

# ZeRO-3 hung at step 7 on this data while the black tile was encoded before DeepSpeed's start-of-forward hook.
STEPS = 8
# One process and two agree to float32 reduction-order noise: the same 2 samples, summed in another order.
LOSS_RTOL = 1e-5


def _common(tmp_path, demo_dir, checkpoint, name):
    return [f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}", f"run_name={name}",
            "model=local", f"model.path={checkpoint}", "model.template=internvl2_5", "model.dtype=float32",
            "model.image_size=64", "model.patch_size=8", "model.max_dynamic_patch=4",
            "data=mix", "trainer.per_device_train_batch_size=1", "trainer.global_batch_size=2",
            "trainer.activation_checkpointing=true", "trainer.logging_steps=1"]


@pytest.fixture(scope="module")
def single_first_loss(tmp_path_factory, demo_dir, tiny_checkpoint):
    out = tmp_path_factory.mktemp("single")
    res = run_launch(_common(out, demo_dir, tiny_checkpoint, "single") + ["trainer.max_steps=1"])
    assert res.returncode == 0, res.stderr[-4000:]
    metrics = json.loads((out / "default" / "single" / "metrics.json").read_text())
    return metrics["loss_history"][0]["loss"]


@pytest.mark.parametrize("deepspeed", ["none", "zero2", "zero3"])
def test_torchrun_two_processes(deepspeed, tmp_path, demo_dir, tiny_checkpoint, single_first_loss):
    from transformers import AutoModelForImageTextToText

    steps = STEPS
    res = run_launch(_common(tmp_path, demo_dir, tiny_checkpoint, "dist") + [
        "distributed=torchrun", "distributed.nproc_per_node=2", f"deepspeed={deepspeed}",
        f"trainer.max_steps={steps}", "logger=wandb"])
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-4000:])
    experiment = tmp_path / "default"
    assert [p.name for p in experiment.iterdir()] == ["dist"]  # one run directory
    run_dir = experiment / "dist"
    assert len(list(run_dir.rglob("metrics.json"))) == 1
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1  # one tracker run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == steps, metrics
    assert metrics["throughput"]["world_size"] == 2
    assert metrics["samples"] == 2 * steps
    assert math.isclose(metrics["loss_history"][0]["loss"], single_first_loss, rel_tol=LOSS_RTOL), (
        metrics["loss_history"][0], single_first_loss)
    assert (run_dir / "deepspeed.json").is_file() == (deepspeed != "none")
    if deepspeed != "none":
        ds = json.loads((run_dir / "deepspeed.json").read_text())
        assert ds["zero_optimization"]["stage"] == int(deepspeed[-1]) and ds["train_batch_size"] == 2
    model = AutoModelForImageTextToText.from_pretrained(run_dir / "final")  # ZeRO-3: gathered 16-bit weights
    reference = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    trained = dict(model.named_parameters())
    assert set(trained) == set(dict(reference.named_parameters()))
    assert any(not (trained[n] == p).all() for n, p in reference.named_parameters())  # it trained
