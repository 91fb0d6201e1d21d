"""Export to OpenGVLab's original layout (models/convert/export.py, tools/export.py).

Round trips against independent data: the golden checkpoint written by OpenGVLab's own code and the synthetic
original checkpoints of every LLM family (tests/original_checkpoints.py, shape tables written from the original
modeling code). original -> native -> original must give back every tensor bit for bit and every config field
the original code reads; native -> original -> native likewise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import fixture
from original_checkpoints import FAMILIES, write_original_checkpoint

GOLDEN = fixture("original_layout", "qwen2_vit300m")
# What OpenGVLab's InternVLChatConfig.__init__ and InternVLChatModel read from the top level of config.json.
TOP_READ = ("select_layer", "force_image_size", "downsample_ratio", "ps_version", "template", "dynamic_image_size",
            "use_thumbnail", "min_dynamic_patch", "max_dynamic_patch", "use_backbone_lora", "use_llm_lora",
            "pad2square", "model_type", "architectures")
# Sub-config entries that are transformers-4 bookkeeping or runtime switches, not read as architecture: every
# PretrainedConfig writes the generation defaults; the remote code sets attention and flash-attn itself.
NOT_READ = {"return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16",
            "tf_legacy_loss", "pruned_heads", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder",
            "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder", "max_length", "min_length",
            "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature",
            "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
            "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
            "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
            "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "finetuning_task",
            "id2label", "label2id", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id",
            "task_specific_params", "problem_type", "_name_or_path", "transformers_version", "attn_implementation",
            "use_flash_attn", "auto_map", "torch_dtype", "bos_token_id", "eos_token_id", "pad_token_id",
            "drop_path_rate", "sliding_window", "tie_word_embeddings"}


def read_fields(cfg: dict) -> dict:
    """The fields of an original config.json that change what the original code builds."""
    out = {k: cfg.get(k) for k in TOP_READ}
    for section in ("vision_config", "llm_config"):
        out |= {f"{section}.{k}": v for k, v in cfg[section].items() if k not in NOT_READ}
    return out


def assert_reproduces(built: dict, source: dict) -> None:
    """Every field of the source the original code reads is in `built` with the same value (the export may add
    fields transformers 5 knows and transformers 4 ignores, e.g. layer_types, head_dim)."""
    want, got = read_fields(source), read_fields(built)
    assert {k: got.get(k, "<missing>") for k in want} == want
    # The LLM's tie flag decides whether its lm_head shares the embeddings (the vision tower's means nothing).
    assert built["llm_config"].get("tie_word_embeddings", False) == source["llm_config"].get("tie_word_embeddings", False)


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out |= load_file(str(f))
    return out


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k, t in want.items():
        assert got[k].dtype == t.dtype and got[k].shape == t.shape, k
        assert torch.equal(got[k], t), k


def _convert(src: Path, dst: Path) -> None:
    from internvl_exp.models.convert import convert_checkpoint

    convert_checkpoint(src, dst, show_progress=False)


def _export(native: Path, dst: Path, **kw):
    from internvl_exp.models.convert.export import export_original

    return export_original(native, dst, show_progress=False, **kw)


def _without_source(native: Path, tmp: Path) -> Path:
    """A copy of a converted directory with no record of its source: the export builds everything from it."""
    copy = tmp / (native.name + "_alone")
    shutil.copytree(native, copy)
    (copy / "conversion.json").unlink()
    return copy


def test_golden_original_native_original_is_exact(tmp_path):
    _convert(GOLDEN, tmp_path / "native")
    report = _export(tmp_path / "native", tmp_path / "back")
    assert report.source_checkpoint == str(GOLDEN) and report.config_changed == []
    assert_same_tensors(tensors_of(tmp_path / "back"), tensors_of(GOLDEN))
    source = json.loads((GOLDEN / "config.json").read_text())
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back == source  # the source's config, nothing the trained model holds differently
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "back" / name).read_bytes() == (GOLDEN / name).read_bytes()

    # Built from the native directory alone (no source): the same fields the original code reads.
    alone = _export(_without_source(tmp_path / "native", tmp_path), tmp_path / "built")
    assert alone.source_checkpoint is None and "InternVL2_5-1B" in alone.remote_code_note
    built = json.loads((tmp_path / "built" / "config.json").read_text())
    assert_reproduces(built, source)
    assert set(source["auto_map"].items()) <= set(built["auto_map"].items())
    assert_same_tensors(tensors_of(tmp_path / "built"), tensors_of(GOLDEN))

    # And the exported directory, converted again, gives the golden logits of OpenGVLab's own model.
    from transformers import AutoModelForImageTextToText

    _convert(tmp_path / "built", tmp_path / "again")
    ref = torch.load(GOLDEN / "reference.pt")
    model = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "again"), dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"], pixel_values=ref["pixel_values"]).logits
    assert (logits - ref["logits"]).abs().max().item() < 1e-6


CASES = [(f, v) for f in FAMILIES for v in ("300m", "6b")]


@pytest.mark.parametrize("family,vit", CASES, ids=[f"{f}-{v}" for f, v in CASES])
def test_every_family_round_trips_both_ways(tmp_path, family, vit):
    tie = family == "qwen3"  # one tied LLM: no lm_head stored on either side
    w = write_original_checkpoint(tmp_path / "src", family, vit, tie=tie, dtype=torch.bfloat16 if vit == "6b" else torch.float32)
    _convert(w.path, tmp_path / "native")
    # original -> native -> original, with the source known (conversion record) and without it.
    _export(tmp_path / "native", tmp_path / "back")
    assert_same_tensors(tensors_of(tmp_path / "back"), w.tensors)
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == w.config
    llm_family = family if family in ("internlm2", "llama") else None  # both are native `llama`
    _export(_without_source(tmp_path / "native", tmp_path), tmp_path / "built", llm_family=llm_family)
    assert_same_tensors(tensors_of(tmp_path / "built"), w.tensors)
    built = json.loads((tmp_path / "built" / "config.json").read_text())
    assert_reproduces(built, w.config)

    # native -> original -> native: every native tensor and the native config come back.
    _convert(tmp_path / "built", tmp_path / "native2")
    assert_same_tensors(tensors_of(tmp_path / "native2"), tensors_of(tmp_path / "native"))
    first = json.loads((tmp_path / "native" / "config.json").read_text())
    second = json.loads((tmp_path / "native2" / "config.json").read_text())
    assert second == first


def test_internlm2_wqkv_is_fused_back_in_its_grouped_layout(tmp_path):
    """The exported wqkv, read the way InternLM2's forward reads it (per KV group: G query heads, key, value),
    gives the native q/k/v projections' outputs."""
    from original_checkpoints import Dims

    d = Dims(heads=8, kv_heads=2, head_dim=8)
    w = write_original_checkpoint(tmp_path / "src", "internlm2", "300m", dims=d)
    _convert(w.path, tmp_path / "native")
    native = tensors_of(tmp_path / "native")
    _export(tmp_path / "native", tmp_path / "back")
    back = tensors_of(tmp_path / "back")
    G = d.heads // d.kv_heads
    x = torch.randn(5, d.hidden, generator=torch.Generator().manual_seed(0))
    qkv = (x @ back["language_model.model.layers.1.attention.wqkv.weight"].T).view(5, d.kv_heads, G + 2, d.head_dim)
    p = "model.language_model.layers.1.self_attn."
    assert torch.equal(qkv[:, :, :G].reshape(5, -1), x @ native[p + "q_proj.weight"].T)
    assert torch.equal(qkv[:, :, G].reshape(5, -1), x @ native[p + "k_proj.weight"].T)
    assert torch.equal(qkv[:, :, G + 1].reshape(5, -1), x @ native[p + "v_proj.weight"].T)


def test_internlm2_sentencepiece_tokenizer_and_remote_code_come_from_the_source(tmp_path):
    """An InternLM2 checkpoint with its sentencepiece tokenizer and remote-code files: the export holds the
    released tokenizer files and .py files byte for byte (the native side only has a tokenizer.json)."""
    from test_convert_sentencepiece import make_internlm2_checkpoint

    w = write_original_checkpoint(tmp_path / "src", "internlm2", "300m")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (w.path / name).unlink()
    make_internlm2_checkpoint(w.path)
    code = {"modeling_internvl_chat.py": "# stands in for OpenGVLab's file\n",
            "tokenization_internlm2.py": "# stands in for InternLM2's tokenizer code\n"}
    for name, text in code.items():
        (w.path / name).write_text(text)
    _convert(w.path, tmp_path / "native")
    assert not (tmp_path / "native" / "tokenizer.model").exists()
    report = _export(tmp_path / "native", tmp_path / "back")
    assert sorted(report.remote_code) == sorted(code) and report.remote_code_note is None
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", *code):
        assert (tmp_path / "back" / name).read_bytes() == (w.path / name).read_bytes(), name
    assert not (tmp_path / "back" / "tokenizer.json").exists()
    assert_same_tensors(tensors_of(tmp_path / "back"), w.tensors)


def test_tokenizer_written_without_a_source_encodes_like_the_trained_one(tmp_path):
    """No source checkpoint: the trained tokenizer.json goes out with a config transformers reads as
    PreTrainedTokenizerFast (VLMEvalKit asks for use_fast=False); ids and the image tokens are unchanged, and
    a <video> placeholder the conversion appended past the embedding table is gone."""
    from transformers import AutoTokenizer

    _convert(GOLDEN, tmp_path / "native")  # its tokenizer has no <video>: the conversion appends one (id 600)
    report = _export(_without_source(tmp_path / "native", tmp_path), tmp_path / "built")
    assert report.tokenizer.startswith("the trained model's tokenizer.json")
    ours = AutoTokenizer.from_pretrained(str(tmp_path / "native"))
    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "built"), use_fast=False, trust_remote_code=False)
    text = "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is shown? 123<|im_end|>\n"
    assert theirs(text)["input_ids"] == ours(text)["input_ids"]
    assert theirs.eos_token == "<|im_end|>" and theirs.convert_tokens_to_ids("<IMG_CONTEXT>") == ours.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert ours.convert_tokens_to_ids("<video>") == 600 and "<video>" not in theirs.get_vocab()
    assert theirs.get_vocab() == {t: i for t, i in ours.get_vocab().items() if t != "<video>"}
