"""Each LLM family x both InternViT kinds: a synthetic original checkpoint, converted and loaded with
from_pretrained, gives the logits of an independent computation (tests/original_checkpoints.py)."""

from __future__ import annotations

import json

import pytest
import torch

from original_checkpoints import (FAMILIES, Dims, internlm2_split_by_index, reference_logits, sample_inputs,
                                  write_original_checkpoint)

CASES = [(f, v) for f in FAMILIES for v in ("300m", "6b")]


def _convert_and_load(tmp_path, family, vit, **kw):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from internvl_exp.models.convert import convert_checkpoint

    w = write_original_checkpoint(tmp_path / "src", family, vit, **kw)
    report = convert_checkpoint(w.path, tmp_path / "dst", show_progress=False)
    model = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "dst"), dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "dst"))
    return w, report, model, tok


@pytest.mark.parametrize("family,vit", CASES, ids=[f"{f}-{v}" for f, v in CASES])
def test_converted_logits_match_independent_reference(tmp_path, family, vit):
    w, report, model, tok = _convert_and_load(tmp_path, family, vit)
    assert report.family == family
    image_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert model.config.image_token_id == image_id == report.image_token_id
    assert model.config.vision_config.use_qk_norm is (vit == "6b")
    assert model.config.vision_config.norm_type == ("rms_norm" if vit == "6b" else "layer_norm")
    assert model.config.vision_config.attention_bias is (vit == "300m")

    pixel_values, input_ids = sample_inputs(image_id, tok.start_image_token_id, tok.end_image_token_id,
                                            model.config.image_seq_length)
    with torch.no_grad():
        got = model(input_ids=input_ids, pixel_values=pixel_values).logits
    ref = reference_logits(w, tmp_path / "reference_llm", input_ids, pixel_values, image_id)
    # Logits are O(1) (std ~1, max ~4); float32 agreement measured at 2-4e-6 for every case.
    assert ref.std() > 0.5
    assert (got - ref).abs().max().item() < 5e-5


def test_internlm2_wqkv_split_matches_grouped_attention(tmp_path):
    """q, k, v from InternLM2's fused wqkv, computed the way its forward does (view the output per KV group as
    [G query heads, key, value]), equal the outputs of the converted q_proj / k_proj / v_proj."""
    from safetensors import safe_open

    d = Dims(heads=8, kv_heads=2, head_dim=8)
    w = write_original_checkpoint(tmp_path / "src", "internlm2", "300m", dims=d)
    from internvl_exp.models.convert import convert_checkpoint

    convert_checkpoint(w.path, tmp_path / "dst", show_progress=False)
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())["weight_map"]

    def native(name):
        with safe_open(str(tmp_path / "dst" / index[name]), framework="pt") as f:
            return f.get_tensor(name)

    G = d.heads // d.kv_heads
    x = torch.randn(3, 5, d.hidden, generator=torch.Generator().manual_seed(0))
    for layer in range(d.layers):
        wqkv = w.tensors[f"language_model.model.layers.{layer}.attention.wqkv.weight"]
        qkv = (x @ wqkv.T).view(3, 5, d.kv_heads, G + 2, d.head_dim)
        q_ref = qkv[..., :G, :].reshape(3, 5, d.heads, d.head_dim)
        k_ref, v_ref = qkv[..., -2, :], qkv[..., -1, :]
        p = f"model.language_model.layers.{layer}.self_attn."
        q = (x @ native(p + "q_proj.weight").T).view(3, 5, d.heads, d.head_dim)
        k = (x @ native(p + "k_proj.weight").T).view(3, 5, d.kv_heads, d.head_dim)
        v = (x @ native(p + "v_proj.weight").T).view(3, 5, d.kv_heads, d.head_dim)
        torch.testing.assert_close(q, q_ref)
        torch.testing.assert_close(k, k_ref)
        torch.testing.assert_close(v, v_ref)
        # And the test's own index-loop split agrees row for row.
        qi, ki, vi = internlm2_split_by_index(wqkv, d.heads, d.kv_heads, d.head_dim)
        assert torch.equal(qi, native(p + "q_proj.weight")) and torch.equal(vi, native(p + "v_proj.weight"))
        assert torch.equal(ki, native(p + "k_proj.weight"))


def test_internlm2_config_and_eos(tmp_path):
    from transformers import GenerationConfig

    w, report, model, tok = _convert_and_load(tmp_path, "internlm2", "6b")
    text = model.config.text_config
    assert text.model_type == "llama" and text.attention_bias is False and text.mlp_bias is False
    assert text.rope_parameters["rope_type"] == "dynamic" and text.rope_parameters["factor"] == 2.0
    # llm_config eos is </s>-like (2); a chat model must stop at <|im_end|>.
    assert GenerationConfig.from_pretrained(str(tmp_path / "dst")).eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")


def test_moe_experts_spread_over_shards_are_stacked(tmp_path):
    """Qwen3-MoE experts of one layer sit in different source shards; the fused native tensor still holds them
    in order (gate rows first, then up), as transformers' own per-expert loader would build it."""
    from safetensors import safe_open

    w, report, model, tok = _convert_and_load(tmp_path, "qwen3_moe", "300m")
    src_index = json.loads((w.path / "model.safetensors.index.json").read_text())["weight_map"]
    shards = {src_index[f"language_model.model.layers.0.mlp.experts.{e}.{p}.weight"]
              for e in range(4) for p in ("gate_proj", "up_proj", "down_proj")}
    assert len(shards) >= 2
    experts = model.model.language_model.layers[0].mlp.experts
    t = w.tensors
    for e in range(4):
        pre = f"language_model.model.layers.0.mlp.experts.{e}."
        torch.testing.assert_close(experts.gate_up_proj[e].detach(),
                                   torch.cat([t[pre + "gate_proj.weight"], t[pre + "up_proj.weight"]]), rtol=0, atol=0)
        torch.testing.assert_close(experts.down_proj[e].detach(), t[pre + "down_proj.weight"], rtol=0, atol=0)
    assert report.shards_written >= 1


def test_tied_checkpoint_and_bfloat16_are_preserved(tmp_path):
    """A tied LLM (no lm_head stored) converts tied, never untied; a bfloat16 checkpoint stays bfloat16."""
    from internvl_exp.models.convert.verify import written_tensors

    w, report, model, tok = _convert_and_load(tmp_path, "qwen3", "300m", tie=True, dtype=torch.bfloat16)
    assert report.tie_word_embeddings is True and model.config.tie_word_embeddings is True
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    stored = written_tensors(tmp_path / "dst")
    assert "lm_head.weight" not in stored
    assert {dtype for _, dtype in stored.values()} == {"bfloat16"}
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["dtype"] == "bfloat16"
