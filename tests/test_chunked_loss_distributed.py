"""trainer.chunked_loss over 2 processes (torchrun, gloo, CPU) through the real launch.py: DDP and ZeRO-3 (the head's
weight sharded, gathered inside its own module call) train the same first steps, and reach the same eval loss, as
one process on the plain full-logits path at the same global batch."""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_launch

STEPS = 3
# Step 1: float32 reduction-order noise only (tests/test_distributed.py's bound). Later steps and the final eval
# loss follow weights that already carry that noise through AdamW.
FIRST_RTOL, LATER_RTOL = 1e-5, 1e-4


def _common(tmp_path, demo_dir, checkpoint, name):
    return [f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}", f"run_name={name}",
            "model=local", f"model.path={checkpoint}", "model.template=internvl2_5", "model.dtype=float32",
            "model.image_size=64", "model.patch_size=8", "model.max_dynamic_patch=4",
            "data=mix", "trainer.per_device_train_batch_size=1", "trainer.global_batch_size=2",
            "trainer.logging_steps=1", f"trainer.max_steps={STEPS}", "trainer.save_final=false",
            "data.eval_fraction=0.05", "trainer.per_device_eval_batch_size=2", "trainer.save_strategy=no",
            "trainer.bf16=false"]  # fp32 (model=local's recipe trains bf16): exact comparisons


def _metrics(out, name):
    return json.loads((out / "default" / name / "metrics.json").read_text())


@pytest.fixture(scope="module")
def plain_single(tmp_path_factory, demo_dir, tiny_checkpoint):
    out = tmp_path_factory.mktemp("plain")
    res = run_launch(_common(out, demo_dir, tiny_checkpoint, "plain") + ["trainer.chunked_loss=false"])
    assert res.returncode == 0, res.stderr[-4000:]
    return _metrics(out, "plain")


@pytest.mark.slow  # 2 processes, or a signal-driven end-to-end run (make test-fast leaves it out)
@pytest.mark.parametrize("deepspeed", ["none", "zero3"])
def test_chunked_two_processes_match_the_plain_path(deepspeed, tmp_path, demo_dir, tiny_checkpoint, plain_single):
    res = run_launch(_common(tmp_path, demo_dir, tiny_checkpoint, "chunked") + [
        "trainer.chunked_loss=true", "distributed=torchrun", "distributed.nproc_per_node=2",
        f"deepspeed={deepspeed}"])
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-4000:])
    metrics = _metrics(tmp_path, "chunked")
    assert metrics["status"] == "completed" and metrics["steps"] == STEPS
    got = [h["loss"] for h in metrics["loss_history"]]
    want = [h["loss"] for h in plain_single["loss_history"]]
    assert len(got) == len(want) == STEPS
    assert math.isclose(got[0], want[0], rel_tol=FIRST_RTOL), (got, want)
    for a, b in zip(got[1:], want[1:]):
        assert math.isclose(a, b, rel_tol=LATER_RTOL), (got, want)
    assert math.isclose(metrics["final_eval_loss"], plain_single["final_eval_loss"], rel_tol=LATER_RTOL)
    assert metrics["memory_plan"]["loss"] == "chunked" and plain_single["memory_plan"]["loss"] == "full logits"
