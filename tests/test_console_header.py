"""The short run header (train/reporting/console_header.py) for settings the in-process runs do not cover: real weights,
LoRA, DeepSpeed with offload on 8 processes, a GPU verdict. Composed from the real config tree; the planner
runs on the tiny preset's meta model."""

from __future__ import annotations

from pathlib import Path

from conftest import compose

from internvl_exp.data.report import DataReport
from internvl_exp.models.resolve import NATIVE_TYPE, Weights
from internvl_exp.train.reporting.console_header import launch_header, training_header


def test_launch_header_names_weights_lora_deepspeed_and_processes(tmp_path):
    cfg = compose(["model=internvl2_8b", "freeze=lora_llm", "deepspeed=zero3_offload", "distributed=torchrun",
                   "distributed.nproc_per_node=8", "trainer.bf16=true", "run_name=sft1", "sweep_name=null"], tmp_path)
    weights = Weights(tmp_path / "InternVL2-8B", {"model_type": NATIVE_TYPE}, origin="HF cache")
    text = launch_header(cfg, weights, tmp_path / "outputs" / "default" / "sft1")
    lines = text.splitlines()
    assert lines[0] == "run sft1"
    assert lines[1] == f"  model     internvl2_8b: native-layout weights from {tmp_path / 'InternVL2-8B'} (HF cache)"
    assert lines[2] == "  trains    freeze=lora_llm: llm lora (r=16, alpha=32); vision, projector, lm_head frozen"
    assert lines[3].startswith("  processes torchrun: 8 process(es) per node x 1 node(s); DeepSpeed ZeRO-3 "
                               "(optimizer and parameter offload); device auto")
    assert lines[3].endswith(", bf16")
    # The resolved settings, each the recipe's or the command line's (config/resolve.py); bf16 weights under ZeRO.
    assert lines[4] == ("  settings  lr 4e-05 (recipe internvl2_8b), weight decay 0.05 (recipe internvl2_8b), warmup 0.03 "
                        "(recipe internvl2_8b), schedule cosine (recipe internvl2_8b), max_seq_length 4096 (recipe "
                        "internvl2_8b), bf16 on (override), activation checkpointing on (recipe internvl2_8b), weights "
                        "bfloat16, accumulation 1")
    assert lines[5].startswith(f"  outputs   {tmp_path / 'outputs' / 'default' / 'sft1'} ")
    assert "├──" not in text and "tokens_per_tile" not in text  # not the config tree


def test_training_header_gives_data_size_parameters_and_the_gpu_verdict(tmp_path):
    from internvl_exp.train.planning.memory_plan import plan_memory

    cfg = compose(["trainer.device_memory_gb=1", "trainer.max_steps=7"], tmp_path)
    plan = plan_memory(cfg, gpu="H100")
    report = DataReport(samples=1234, per_dataset={"a": 1000, "b": 234})
    text = training_header(report, plan)
    assert "  data      1,234 samples (a 1,000, b 234); 7 optimizer steps" in text
    share = 100 * plan.trainable / plan.parameters
    assert f"trainable ({share:.1f}%)" in text and "vision" not in text.split("params")[1].split("\n")[0]
    # The verdict against the 1 GiB the config states, not the H100's 80.
    assert "  planner   DOES NOT FIT: " in text and "of 1 GiB per H100" in text
