"""distributed=torchrun on CPU (gloo), 2 processes: DDP, ZeRO-2 and ZeRO-3 through the real launch.py.

One run per setting, each checked for everything at once (every torchrun start costs ~10-20 s of imports per
process): one run directory, one metrics.json, one wandb run, deepspeed.json, a final/ that from_pretrained
loads, and the first-step loss equal to one process at the same global batch. The runs use data=mix, one
sample per rank and activation checkpointing, the setting that hung before text-only batches kept the vision
path in the graph (train/recipe/same_graph.py): finishing at all is part of the test.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_launch

pytestmark = pytest.mark.slow  # 2-process torchrun runs, DeepSpeed ZeRO-2/3 included

# ZeRO-3 hung at step 7 on this data while the black tile was encoded before DeepSpeed's start-of-forward hook.
STEPS = 8
# One process and two agree to float32 reduction-order noise: the same 2 samples, summed in another order.
LOSS_RTOL = 1e-5


def _common(tmp_path, demo_dir, checkpoint, name):
    return [f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}", f"run_name={name}",
            "model=local", f"model.path={checkpoint}", "model.template=internvl2_5", "model.dtype=float32",
            "model.image_size=64", "model.patch_size=8", "model.max_dynamic_patch=4",
            "data=mix", "trainer.per_device_train_batch_size=1", "trainer.global_batch_size=2",
            "trainer.activation_checkpointing=true", "trainer.logging_steps=1", "trainer.bf16=false"]  # fp32: exact comparisons


@pytest.fixture(scope="module")
def single_first_loss(tmp_path_factory, demo_dir, tiny_checkpoint):
    out = tmp_path_factory.mktemp("single")
    res = run_launch(_common(out, demo_dir, tiny_checkpoint, "single") + ["trainer.max_steps=1"])
    assert res.returncode == 0, res.stderr[-4000:]
    metrics = json.loads((out / "default" / "single" / "metrics.json").read_text())
    return metrics["loss_history"][0]["loss"]


def _eval_meta(tmp_path, demo_dir):
    """7 eval samples, 4 with an image then 3 text-only: rank 0 gets a text-only batch while rank 1's has images
    (the same-graph case in eval), and rank 1 a padding item (7 over 2 ranks)."""
    meta = {}
    for name, n in (("shapes", 4), ("text", 3)):
        lines = (demo_dir / "eval" / f"{name}.jsonl").read_text().splitlines()[:n]
        (tmp_path / f"few_{name}.jsonl").write_text("\n".join(lines) + "\n")
        meta[f"few_{name}"] = {"root": str(demo_dir / "eval"), "annotation": str(tmp_path / f"few_{name}.jsonl")}
    path = tmp_path / "eval_meta.json"
    path.write_text(json.dumps(meta))
    return path


def _oracle_eval_loss(model_dir, meta, tokenizer, demo_dir, tmp_path, checkpoint):
    """The token mean over every supervised eval token from HF's own per-sample loss (one process)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from conftest import compose
    from internvl_exp.data.collator import Collator
    from internvl_exp.data.eval_data import build_eval_datasets

    cfg = compose(_common(tmp_path, demo_dir, checkpoint, "oracle") + [f"data.eval.meta_path={meta}"])
    dataset, _ = build_eval_datasets(cfg, tokenizer, cfg.resolved.tokens_per_tile)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    collate = Collator(tokenizer.pad_token_id)
    total = count = 0.0
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = collate([dataset[i]])
            batch.pop("loss_weight")
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch, use_cache=False).loss) * n
            count += n
    return total / count


@pytest.mark.parametrize("deepspeed", ["none", "zero2", "zero3"])
def test_torchrun_two_processes(deepspeed, tmp_path, demo_dir, tiny_checkpoint, single_first_loss, tokenizer):
    from transformers import AutoModelForImageTextToText

    steps = STEPS
    meta = _eval_meta(tmp_path, demo_dir)
    res = run_launch(_common(tmp_path, demo_dir, tiny_checkpoint, "dist") + [
        "distributed=torchrun", "distributed.nproc_per_node=2", f"deepspeed={deepspeed}",
        f"trainer.max_steps={steps}", "logger=wandb", f"data.eval.meta_path={meta}",
        "trainer.per_device_eval_batch_size=2"])
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-4000:])
    experiment = tmp_path / "default"
    assert sorted(p.name for p in experiment.iterdir()) == ["dist"]  # one run directory
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
    # The final model's eval loss over 2 ranks (7 samples, one padding item) = one process's token mean.
    assert metrics["eval_data"]["samples"] == 7 and [h["step"] for h in metrics["eval_loss"]] == [steps]
    oracle = _oracle_eval_loss(run_dir / "final", meta, tokenizer, demo_dir, tmp_path / "oracle", tiny_checkpoint)
    assert math.isclose(metrics["final_eval_loss"], oracle, rel_tol=1e-4), (metrics["final_eval_loss"], oracle)
    model = AutoModelForImageTextToText.from_pretrained(run_dir / "final")  # ZeRO-3: gathered 16-bit weights
    reference = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    trained = dict(model.named_parameters())
    assert set(trained) == set(dict(reference.named_parameters()))
    assert any(not (trained[n] == p).all() for n, p in reference.named_parameters())  # it trained
