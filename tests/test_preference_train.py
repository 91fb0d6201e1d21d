"""Preference training through launch.py against InternVL's own MPO/DPO trainer (the golden in
tests/fixtures/golden_mpo): one step on the golden policy, reference and 7 pairs logs each term of the golden.

The command is the one docs/preference.md documents ("Check one step against given models"): the golden's
settings (tile 56, max_dynamic_patch 6, max_seq_length 512, float32, no drop-path), the 7 pairs as one
micro-batch, the reference another checkpoint (objective.reference). The logged values are those of the step's
forward, before its update. One multirun (mpo, dpo) x (chunked loss on, off) shares the process start."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_launch
from golden_mpo import GOLDEN, REFERENCE, policy_original


def golden_command(policy, reference, out, cache) -> list[str]:
    return ["model=local", f"model.path={policy}", "model.template=internvl2_5", "model.image_size=56",
            "model.dtype=float32", f"objective.reference={reference}", "data=meta", "data.meta_path=data/meta.json",
            "data.max_seq_length=512", "trainer.per_device_train_batch_size=7", "trainer.max_steps=1",
            "trainer.logging_steps=1", "trainer.bf16=false", "trainer.save_final=false", "trainer.device=cpu",
            f"paths.output_dir={out}", f"paths.cache_dir={cache}"]


@pytest.mark.slow
def test_one_step_logs_the_golden_terms(tmp_path) -> None:
    policy = policy_original(tmp_path / "policy")
    args = ["-m", "objective=mpo,dpo", "trainer.chunked_loss=true,false", "sweep_name=golden",
            *golden_command(policy, REFERENCE, tmp_path / "out", tmp_path / "cache")]
    res = run_launch(args, cwd=GOLDEN)  # the meta's relative paths resolve against the working directory
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    jobs = sorted((tmp_path / "out" / "default" / "multirun" / "golden").glob("*_*/metrics.json"))
    assert len(jobs) == 4
    for path in jobs:
        metrics = json.loads(path.read_text())
        assert metrics["status"] == "completed", metrics.get("error")
        config = (path.parent / "config.yaml").read_text()
        kind = "mpo" if "kind: mpo" in config else "dpo"
        golden = torch.load(GOLDEN / kind / "results.pt", weights_only=False)["step1"]
        logged = metrics["preference"]["history"][0]
        assert metrics["loss_history"][0]["loss"] == pytest.approx(golden["loss"], rel=1e-5)
        sigmoid = next(t for t in golden["terms"] if t["loss_type"] == "sigmoid")
        assert logged["loss/sigmoid"] == pytest.approx(sigmoid["mean_unweighted"], rel=1e-5)
        for key in ("rewards/accuracies", "logps/chosen", "logps/rejected"):
            assert logged[key] == pytest.approx(golden["metrics"][key], rel=1e-5), key
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            # β·(a difference of log-probs around -300 that agree within 3e-5): absolute, not relative
            assert logged[key] == pytest.approx(golden["metrics"][key], abs=2e-6), key
        if kind == "mpo":
            bco = next(t for t in golden["terms"] if t["loss_type"] == "bco_pair")
            assert logged["loss/bco_pair"] == pytest.approx(bco["mean_unweighted"], rel=1e-5)
            assert logged["nll"] == pytest.approx(golden["nll_loss"], rel=1e-5)
            # δ is a mean of rewards ~0.005 built from those same differences: 3e-6 absolute is 6e-4 relative.
            assert logged["delta"] == pytest.approx(bco["delta_used"], abs=3e-6)
        else:
            assert "loss/bco_pair" not in logged and "nll" not in logged and "delta" not in logged


@pytest.mark.slow
def test_the_pair_demo_learns_to_prefer_the_right_answer(tmp_path) -> None:
    """`python launch.py objective=mpo data=demo_pref` as documented: the held-out pairs' reward accuracy rises
    well above chance (the chosen answers are right, read from the pixels or the text)."""
    res = run_launch(["objective=mpo", "data=demo_pref", f"paths.output_dir={tmp_path / 'out'}",
                      f"paths.demo_data_dir={tmp_path / 'demo'}", "run_name=demo"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "default" / "demo" / "metrics.json").read_text())
    evals = metrics["preference"]["eval_history"]
    assert len(evals) >= 3 and metrics["eval_samples"] == 48
    assert evals[0]["rewards/accuracies"] < 0.7 <= evals[-1]["rewards/accuracies"], evals
    assert evals[-1]["rewards/margins"] > 10 * abs(evals[0]["rewards/margins"])


def test_two_steps_of_the_preference_step_follow_the_golden_delta(tmp_path) -> None:
    """The training step's own pieces (train/recipe/preference_step.py: one policy forward, the frozen reference,
    δ carried between micro-batches) on the golden's two batches: all 7 pairs, then lines 0, 2, 4."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from golden_mpo import converted
    from internvl_exp.data.planner import ImageSettings
    from internvl_exp.data.preference import PreferenceEncoder, collate_pairs
    from internvl_exp.data.sources import load_entries
    from internvl_exp.objectives.preference_loss import PreferenceObjective
    from internvl_exp.train.recipe.preference_step import PreferenceStep
    from internvl_exp.train.recipe.reference import Reference

    dirs = {which: converted(which, tmp_path) for which in ("policy", "reference")}
    tokenizer = AutoTokenizer.from_pretrained(str(dirs["reference"]))
    policy, ref = (AutoModelForImageTextToText.from_pretrained(str(dirs[w]), dtype=torch.float32).eval()
                   for w in ("policy", "reference"))
    ref.requires_grad_(False)
    meta = json.loads((GOLDEN / "data" / "meta.json").read_text())
    entry = load_entries(None, {n: {**s, "root": str(GOLDEN / s["root"]), "annotation": str(GOLDEN / s["annotation"])}
                                for n, s in meta.items()})[0]
    encoder = PreferenceEncoder(tokenizer, "internvl2_5", ImageSettings(tile_size=56, tokens_per_tile=4), 512)
    items = [encoder.load(entry, encoder.plan(entry, text)) for text in entry.annotation.read_text().splitlines()]
    golden = torch.load(GOLDEN / "mpo" / "results.pt", weights_only=False)
    step = PreferenceStep(PreferenceObjective(), Reference(ref, ref, "copy"), chunked=False)
    for name, lines in (("step1", range(7)), ("step2", golden["step2"]["batch_lines"])):
        loss = step.loss(policy, policy, collate_pairs([items[i] for i in lines], tokenizer.pad_token_id))
        g = golden[name]
        bco = next(t for t in g["terms"] if t["loss_type"] == "bco_pair")
        assert loss.item() == pytest.approx(g["loss"], rel=1e-5), name
        assert step.running.mean == pytest.approx(bco["running_moments_after"]["mean"], abs=3e-6), name
        assert step.running.count == pytest.approx(bco["running_moments_after"]["count"]), name
    assert step.pop_metrics(None, 1)["delta"] == step.running.mean


@pytest.mark.slow
def test_a_precomputed_reference_trains_as_the_live_copy_without_reference_weights(tmp_path) -> None:
    """objective.reference=precomputed against null (a live frozen copy of the starting weights) on the golden
    policy and pairs, 3 steps of 2 pairs and a held-out eval: the same losses and eval metrics within 1e-5 relative,
    no reference parameters held, and a re-run reuses both stores (train, eval) without computing them again."""
    policy = policy_original(tmp_path / "policy")
    cache = tmp_path / "cache"

    def run(name: str, reference: str) -> dict:
        args = golden_command(policy, reference, tmp_path / "out", cache)
        args = [a for a in args if not a.startswith(("trainer.per_device_train_batch_size", "trainer.max_steps"))]
        res = run_launch(["objective=mpo", *args, f"run_name={name}", "trainer.per_device_train_batch_size=2", "trainer.max_steps=3",
                          "data.eval_fraction=0.3", "trainer.per_device_eval_batch_size=2"], cwd=GOLDEN)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        metrics = json.loads((tmp_path / "out" / "default" / name / "metrics.json").read_text())
        assert metrics["status"] == "completed", metrics.get("error")
        return metrics

    live, pre = run("live", "null"), run("precomputed", "precomputed")
    assert live["preference"]["reference"] == "copy" and pre["preference"]["reference"] == "precomputed"
    # The policy alone: half of what the live run holds (its policy and a whole frozen copy).
    assert pre["preference"]["parameters_held"] * 2 == live["preference"]["parameters_held"]
    assert [h["loss"] for h in pre["loss_history"]] == pytest.approx([h["loss"] for h in live["loss_history"]],
                                                                     rel=1e-5)
    assert len(pre["loss_history"]) == 3
    for mine, theirs in zip(pre["preference"]["history"], live["preference"]["history"]):
        for key in ("loss/sigmoid", "loss/bco_pair", "nll", "logps/chosen", "logps/rejected"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), key
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "delta"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    assert pre["preference"]["history"][2]["rewards/margins"] != 0.0  # the policy moved: the lookup matters
    assert pre["final_eval_loss"] == pytest.approx(live["final_eval_loss"], rel=1e-5)
    for key in ("rewards/accuracies", "rewards/margins", "logps/chosen"):
        assert pre["preference"]["final_eval"][key] == pytest.approx(live["preference"]["final_eval"][key],
                                                                     rel=1e-5, abs=1e-6), key
    stores = sorted((cache / "reference_logps").glob("*/key.json"))
    assert len(stores) == 2  # the train pairs and the eval pairs
    written = [p.stat().st_mtime_ns for p in stores]
    again = run("again", "precomputed")
    assert [p.stat().st_mtime_ns for p in stores] == written and again["loss_history"] == pre["loss_history"]
    # The first run loaded the starting weights a second time to score the pairs; the re-run found every store
    # and loaded no reference at all.
    first_log = (tmp_path / "out" / "default" / "precomputed" / "train.log").read_text()
    again_log = (tmp_path / "out" / "default" / "again" / "train.log").read_text()
    assert "reference model = the starting weights" in first_log and "reference model is not loaded" not in first_log
    assert "reference model = the starting weights" not in again_log and "reference model is not loaded" in again_log


@pytest.mark.slow
def test_pair_load_failures_in_loader_workers_reach_metrics_json(tmp_path) -> None:
    """data.on_error=skip with 2 data-loader worker processes: 2 of 6 pairs have an image whose header scans but
    whose pixels are cut off, so they fail when loaded (in a worker) and the next pair is served. metrics.json's
    data report counts them (each bad pair at least once per epoch; 3 when they follow each other in the order)."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    lines = [{"image": "cut.png" if i in (1, 4) else "ok.png", "question": "What is it?", "chosen": "Noise.",
              "rejected": "A cat."} for i in range(6)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "meta.json").write_text(json.dumps({"p": {"root": str(tmp_path), "annotation": str(tmp_path / "pairs.jsonl")}}))
    res = run_launch(["objective=mpo", "data=meta", f"data.meta_path={tmp_path / 'meta.json'}", "data.on_error=skip",
                      "trainer.dataloader_num_workers=2", "trainer.per_device_train_batch_size=1", "trainer.max_steps=6",
                      "trainer.save_final=false", "trainer.eval_strategy=no", f"paths.output_dir={tmp_path / 'out'}",
                      f"paths.cache_dir={tmp_path / 'cache'}", "run_name=skip"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "default" / "skip" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 6, metrics.get("error")
    data = metrics["data"]
    assert data["samples"] == 6 and data["skipped_by_reason"] == {}  # the scan accepts every line
    assert set(data["load_failures_by_reason"]) == {"corrupt_media"}
    assert 2 <= data["load_failures"] == data["load_failures_by_reason"]["corrupt_media"] <= 3
    assert data["plan"] == "cache-miss"
