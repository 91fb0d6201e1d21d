"""The planner's accounting of a preference run's reference model (copy, LoRA, precomputed) and of its 2 sequences
per pair, against arithmetic written out here from the preset's own numbers."""

from __future__ import annotations

import pytest

from conftest import compose
from internvl_exp.train.planning.memory_plan import (GIB, format_plan, plan_memory, reference_memory, reference_mode)

BASE = ["model=internvl2_5_8b", "freeze=full", "data.max_seq_length=2048", "trainer.bf16=true",
        "trainer.per_device_train_batch_size=2", "trainer.chunked_loss=false"]


@pytest.fixture(scope="module")
def zero3():
    return compose(BASE + ["deepspeed=zero3"])


def test_reference_weights_per_mode_and_stage() -> None:
    params = 8_075_365_376
    assert reference_memory("copy", params, 2, 8, 3, False) == params * 2 / 8  # sharded like the policy
    assert reference_memory("copy", params, 2, 8, 1, False) == params * 2  # ZeRO-1/2, DDP: a whole replica
    assert reference_memory("copy", params, 4, 1, 0, False) == params * 4
    assert reference_memory("copy", params, 2, 8, 3, True) == 0  # offloaded with the policy's parameters
    for mode in ("lora", "precomputed", "none"):
        assert reference_memory(mode, params, 2, 8, 3, False) == 0
    with pytest.raises(ValueError, match="not one of"):
        reference_memory("shared", params, 2, 8, 3, False)


def test_copy_adds_the_weights_and_the_forward_precomputed_neither(zero3) -> None:
    sft = plan_memory(zero3, world=8, reference="none", gpu="H100")
    copy = plan_memory(zero3, world=8, reference="copy", gpu="H100")
    pre = plan_memory(zero3, world=8, reference="precomputed", gpu="H100")
    n = copy.parameters
    assert copy.reference_bytes == n * 2 / 8 and pre.reference_bytes == 0 and sft.reference_bytes == 0
    # No gradient or optimizer state for the reference: those rows are the policy's alone.
    assert (copy.gradients_bytes, copy.optimizer_bytes) == (sft.gradients_bytes, sft.optimizer_bytes)
    assert copy.optimizer_bytes == n * 12 / 8  # fp32 master + 2 fp32 moments, sharded (the policy only)

    # 2 sequences per pair: the LLM and the logits see 2 x 2 rows, the vision tower the 2 pairs' images once.
    doubled = plan_memory(compose(BASE + ["deepspeed=zero3", "trainer.per_device_train_batch_size=4"]), world=8,
                          reference="none", gpu="H100")
    for plan in (copy, pre):
        assert plan.activation_detail["llm"] == doubled.activation_detail["llm"]
        assert plan.activation_detail["logits"] == doubled.activation_detail["logits"]
        assert plan.activation_detail["vision"] == sft.activation_detail["vision"]

    # The reference's no-grad forward over the 4 rows (InternLM2.5-7B: h 4096, i 14336, vocabulary 92553), bf16,
    # full logits: the MLP's 2h + 3i per token, and 16-bit + fp32 upcast + fp32 log-softmax logits.
    tokens = 4 * 2048
    h, i, vocab = 4096, 14336, 92553
    assert copy.reference_forward_bytes == pytest.approx(tokens * (2 * h + 3 * i) * 2 + tokens * vocab * (2 + 4 + 4))
    assert pre.reference_forward_bytes == 0
    head_grad = copy.trainable_per_part["lm_head"] * 2 / 8
    held = copy.weights_bytes + copy.optimizer_bytes + copy.buffers_bytes
    acts = copy.activations_bytes
    assert copy.peak_bytes == pytest.approx(held + copy.reference_bytes
                                            + max(acts + max(head_grad, copy.reference_forward_bytes),
                                                  copy.gradients_bytes + copy.trainable * 4 / 8))
    assert pre.peak_bytes == pytest.approx(held + max(acts + head_grad, pre.gradients_bytes + pre.trainable * 4 / 8))
    assert copy.peak_bytes > pre.peak_bytes > sft.peak_bytes


def test_lora_holds_no_copy_and_zero1_a_whole_replica() -> None:
    lora = plan_memory(compose(BASE + ["freeze=lora_llm", "deepspeed=zero1"]), world=8, reference="lora", gpu="H100")
    assert lora.reference_bytes == 0 and lora.reference_forward_bytes > 0  # the forward still runs (adapters off)
    z1 = plan_memory(compose(BASE + ["deepspeed=zero1"]), world=8, reference="copy", gpu="H100")
    assert z1.reference_bytes == z1.parameters * 2 == z1.weights_bytes  # bf16 copy on every device


def test_the_table_names_the_reference(zero3) -> None:
    text = format_plan(plan_memory(zero3, world=8, reference="copy", gpu="H100"))
    plan = plan_memory(zero3, world=8, reference="copy", gpu="H100")
    line = next(row for row in text.splitlines() if row.strip().startswith("reference model"))
    assert f"{plan.reference_bytes / GIB:.2f}" in line and "sharded over 8 (ZeRO-3)" in line
    assert "batch 2 pairs/GPU (2 sequences each)" in text and "reference forward" in text
    assert "precomputed on disk" in format_plan(plan_memory(zero3, world=8, reference="precomputed", gpu="H100"))
    assert "reference model" not in format_plan(plan_memory(zero3, world=8, reference="none", gpu="H100"))


def test_the_mode_follows_the_objective_settings() -> None:
    from omegaconf import OmegaConf

    def cfg(kind, ref, parts):
        return OmegaConf.create({"objective": {"kind": kind, "reference": ref}, "freeze": {"parts": parts}})

    full = {"vision": "frozen", "projector": "full", "llm": "full", "lm_head": "full"}
    lora = {**full, "llm": "lora"}
    assert reference_mode(OmegaConf.create({"freeze": {"parts": full}})) == "none"  # no objective group
    assert reference_mode(cfg("sft", None, full)) == "none"
    assert reference_mode(cfg("mpo", None, full)) == "copy"
    assert reference_mode(cfg("dpo", None, lora)) == "lora"
    assert reference_mode(cfg("mpo", "/ckpt/ref", lora)) == "copy"  # another checkpoint: a copy even under LoRA
    assert reference_mode(cfg("mpo", "precomputed", full)) == "precomputed"
