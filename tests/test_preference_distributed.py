"""MPO through the real launch.py on CPU: 2 processes (gloo) under DDP, ZeRO-2 and ZeRO-3 (reference sharded);
kill -9 and re-run continues δ; a LoRA run holds the base weights once. Each run is checked for everything at
once (a torchrun start costs ~10-20 s of imports per process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import kill_at_hold, run_launch

pytestmark = pytest.mark.slow  # launch.py runs: torchrun, DeepSpeed, killed and resumed


def _common(out: Path, demo_dir: Path, checkpoint: Path, name: str) -> list[str]:
    return [f"paths.output_dir={out}", f"paths.demo_data_dir={demo_dir}", f"run_name={name}",
            "model=local", f"model.path={checkpoint}", "model.template=internvl2_5", "model.dtype=float32",
            "model.image_size=64", "model.patch_size=8", "model.max_dynamic_patch=4", "objective=mpo",
            "data=demo_pref", "trainer.per_device_train_batch_size=1", "trainer.logging_steps=1",
            "trainer.bf16=false", "trainer.save_final=false", "trainer.per_device_eval_batch_size=4"]


def _base_parameters(checkpoint: Path) -> int:
    from transformers import AutoModelForImageTextToText

    return sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(checkpoint).parameters())


def _state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "preference_state.json").read_text())


@pytest.mark.parametrize("deepspeed", ["none", "zero2", "zero3"])
def test_two_processes(deepspeed, tmp_path, demo_dir, tiny_checkpoint):
    steps = 4
    res = run_launch(_common(tmp_path, demo_dir, tiny_checkpoint, "dist") + [
        "distributed=torchrun", "distributed.nproc_per_node=2", f"deepspeed={deepspeed}",
        "trainer.global_batch_size=2", f"trainer.max_steps={steps}", "trainer.save_strategy=steps",
        "trainer.save_steps=2", *(["logger=wandb"] if deepspeed == "none" else [])])
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-4000:])
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == ["dist"]  # one run directory
    run_dir = tmp_path / "default" / "dist"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == steps, metrics.get("error")
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{steps}"
    state = _state(checkpoint)
    marker = json.loads((checkpoint / "checkpoint_complete.json").read_text())
    assert "preference_state.json" in marker["files"]  # part of what makes the checkpoint complete
    deltas = state["per_rank_delta"]
    assert len(deltas) == 2 and deltas[0] == deltas[1]  # every rank holds the same δ
    # One update per micro-batch, each merging one batch mean per rank: steps x 2 means so far.
    assert state["running_mean"]["count"] == pytest.approx(2 * steps)
    pref = metrics["preference"]
    assert [h["step"] for h in pref["history"]] == list(range(1, steps + 1))
    assert pref["final"]["delta"] == pytest.approx(state["running_mean"]["mean"], rel=1e-12)
    assert pref["history"][0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy = reference
    # The final eval over both ranks: every held-out pair once (48; the short rank's padding counts nothing).
    assert metrics["final_eval_loss"] == pytest.approx(pref["final_eval"]["loss"])
    assert metrics["eval_samples"] == 48 and 0.0 <= pref["final_eval"]["rewards/accuracies"] <= 1.0
    if deepspeed == "none":  # every preference metric reaches the tracker, training and eval
        from wandb_records import read_run

        history = read_run(next(next(run_dir.glob("wandb/offline-run-*")).glob("run-*.wandb")))["history"]
        logged = {k for h in history for k in h}
        assert {"rewards/accuracies", "rewards/margins", "loss/sigmoid", "loss/bco_pair", "train/nll", "train/delta",
                "logps/chosen", "eval/rewards/accuracies", "eval/loss", "eval/nll"} <= logged, sorted(logged)
    base = _base_parameters(tiny_checkpoint)
    assert pref["reference"] == ("zero3" if deepspeed == "zero3" else "copy")
    assert pref["parameters_held"] == 2 * base  # the policy and one frozen copy


def test_lora_holds_the_base_once(tmp_path, demo_dir, tiny_checkpoint):
    """LoRA MPO on 2 processes under ZeRO-3: the reference is the sharded policy with its adapters disabled."""
    res = run_launch(_common(tmp_path, demo_dir, tiny_checkpoint, "lora") + [
        "freeze=lora_llm", "trainer.max_steps=2", "trainer.eval_strategy=no", "optimizer.warmup_ratio=0",
        "distributed=torchrun", "distributed.nproc_per_node=2", "deepspeed=zero3", "trainer.global_batch_size=2"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = tmp_path / "default" / "lora"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed", metrics.get("error")
    pref = metrics["preference"]
    params = json.loads((run_dir / "params.json").read_text())["parameters"]
    base = _base_parameters(tiny_checkpoint)
    assert pref["reference"] == "adapters_disabled"
    assert pref["parameters_held"] == base + params["total"]["lora"]  # the base once, plus the adapters
    # LoRA starts as the identity (B = 0): at step 1 the policy is the reference, so every reward is 0.
    assert pref["history"][0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert pref["history"][1]["rewards/margins"] != 0.0  # and after one update the adapters moved it


def test_killed_run_resumes_with_delta_continued(tmp_path, demo_dir, tiny_checkpoint):
    """kill -9 while checkpoint-4 is saved; the re-run resumes from checkpoint-2 with δ as saved there, and ends
    with the δ of the same run uninterrupted (same batches, same weights)."""
    extra = ["trainer.max_steps=6", "trainer.save_strategy=steps", "trainer.save_steps=2",
             "trainer.save_total_limit=3", "trainer.eval_strategy=no"]
    ref = run_launch(_common(tmp_path, demo_dir, tiny_checkpoint, "straight") + extra)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    args = _common(tmp_path, demo_dir, tiny_checkpoint, "killed") + extra
    run_dir = tmp_path / "default" / "killed"
    kill_at_hold(args, {"HOLD_AT_STEP": "4"}, tmp_path / "held")
    saved = _state(run_dir / "checkpoints" / "checkpoint-2")["running_mean"]
    assert saved["count"] == pytest.approx(2)
    res = run_launch(args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "δ restored from" in (run_dir / "train.log").read_text()
    resumed = _state(run_dir / "checkpoints" / "checkpoint-6")["running_mean"]
    straight = _state(tmp_path / "default" / "straight" / "checkpoints" / "checkpoint-6")["running_mean"]
    assert resumed["count"] == pytest.approx(6)  # 2 means before the kill + 4 after, not 4 from a reset
    assert resumed["mean"] == pytest.approx(straight["mean"], rel=1e-6, abs=1e-9)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["resumed_from"].endswith("checkpoint-2")


@pytest.mark.parametrize("reference", ["null", "precomputed"])
def test_zero3_reference_with_a_text_only_rank(reference, tmp_path, tiny_checkpoint):
    """ZeRO-3 shards the reference too, so its forward gathers the vision weights collectively: with one pair with
    an image and one text-only pair over 2 ranks x 1 pair, every step (and the precompute pass) has one rank with a
    text-only batch. Both must run the vision path (train/recipe/same_graph.py), else the ranks wait on each other."""
    from PIL import Image

    data = tmp_path / "pairs"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(data / "images" / "red.png")
    lines = [{"image": "images/red.png", "question": "<image>\nWhat colour is it?", "chosen": "Red.", "rejected": "Blue."},
             {"question": "What comes after 1?", "chosen": "2.", "rejected": "7."}]
    (data / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (data / "meta.json").write_text(json.dumps({"mix": {"root": str(data), "annotation": str(data / "pairs.jsonl")}}))
    args = [f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", "run_name=mix", "model=local",
            f"model.path={tiny_checkpoint}", "model.template=internvl2_5", "model.dtype=float32", "model.image_size=64",
            "model.patch_size=8", "model.max_dynamic_patch=4", "objective=mpo", f"objective.reference={reference}",
            "data=meta", f"data.meta_path={data / 'meta.json'}", "trainer.per_device_train_batch_size=1",
            "trainer.global_batch_size=2", "trainer.max_steps=2", "trainer.logging_steps=1", "trainer.bf16=false",
            "trainer.save_final=false", "trainer.eval_strategy=no", "distributed=torchrun",
            "distributed.nproc_per_node=2", "deepspeed=zero3"]
    res = run_launch(args, timeout=400)  # a rank left waiting in a gather would hang until this timeout
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((tmp_path / "default" / "mix" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 2, metrics.get("error")
    pref = metrics["preference"]
    assert pref["reference"] == ("zero3" if reference == "null" else "precomputed")
    assert pref["history"][0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy = reference
    if reference == "precomputed":
        assert pref["parameters_held"] == _base_parameters(tiny_checkpoint)  # the policy only
