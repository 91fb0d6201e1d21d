"""A LoRA run end to end (run()), then `merge_lora`: the merged plain checkpoint reproduces the adapter model's
logits, and the run reports what trained (metrics.json, params.json)."""

from __future__ import annotations

import json

import torch

from training_helpers import QUICK
from conftest import compose


def test_lora_run_merges_into_a_plain_checkpoint(tmp_path, demo_dir, capsys):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from internvl_exp.data.collator import Collator
    from internvl_exp.data.from_config import build_from_config
    from internvl_exp.outputs import RunDir
    from internvl_exp.tools import merge_lora
    from internvl_exp.train.recipe.run import run

    cfg = compose(QUICK + ["freeze=lora_all", "freeze.parts.projector=full", "optimizer.weight_decay=0.01"],
                  tmp_path, demo_dir)
    rd = RunDir(tmp_path / "run")
    metrics = run(cfg, rd)
    assert metrics["steps"] == 2

    # what trained is reported
    params = metrics["trainable_parameters"]
    assert params["vision"]["lora"] > 0 and params["llm"]["lora"] > 0 and params["lm_head"]["trainable"] == 0
    assert params["projector"]["trainable"] == params["projector"]["total"]  # modules_to_save copy, counted once
    groups = {g["name"]: g for g in metrics["optimizer_groups"]}
    assert set(groups) == {"vision", "llm", "projector", "projector.no_decay"}
    assert groups["projector"]["weight_decay"] == 0.01 and groups["projector.no_decay"]["weight_decay"] == 0.0
    saved = json.loads((rd.root / "params.json").read_text())
    assert saved["optimizer_groups"] == metrics["optimizer_groups"]
    assert json.loads((rd.root / "metrics.json").read_text())["optimizer_groups"] == metrics["optimizer_groups"]

    # final/ is an adapter plus the (random) base it was trained from
    for name in ("adapter_model.safetensors", "adapter_config.json", "processor_config.json", "base/config.json"):
        assert (rd.final / name).exists(), name
    assert not (rd.final / "model.safetensors").exists()

    out = tmp_path / "merged"
    assert merge_lora.main([str(rd.root), "--out", str(out)]) == 0
    assert f"-> {out}" in capsys.readouterr().out

    merged = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    base = AutoModelForImageTextToText.from_pretrained(rd.final / "base")
    assert set(merged.state_dict()) == set(base.state_dict())  # a plain model: no lora_ / modules_to_save keys
    adapter = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(rd.final / "base"), rd.final)

    dataset, _ = build_from_config(cfg, processor.tokenizer, 16)
    batch = Collator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    assert "pixel_values" in batch
    batch.pop("labels")
    for m in (merged, adapter, base):
        m.eval()
    with torch.no_grad():
        merged_logits = merged(**batch).logits
        adapter_logits = adapter(**batch).logits
        base_logits = base(**batch).logits
    assert (merged_logits - adapter_logits).abs().max().item() <= 1e-5
    # and training did change the model (so the comparison above means something)
    assert (merged_logits - base_logits).abs().max().item() > 1e-3


def test_merge_lora_explains_a_run_without_adapter(tmp_path, capsys):
    from internvl_exp.tools import merge_lora

    (tmp_path / "final").mkdir()
    assert merge_lora.main([str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "holds no LoRA adapter" in err and "freeze=lora_llm" in err
