"""The converter refuses what it cannot convert exactly: missing or extra source tensors, mismatched configs,
and written files that differ from what the native config expects. Nothing appears at the destination then."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from original_checkpoints import write_original_checkpoint


def _edit_shard(src, key, new=None):
    """Drop `key` from its shard (new=None) or add/replace it with `new`; keeps the index in step."""
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"].get(key) or sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(str(src / shard))
    if new is None:
        tensors.pop(key)
        index["weight_map"].pop(key)
    else:
        tensors[key] = new
        index["weight_map"][key] = shard
    save_file(tensors, str(src / shard), metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))


def _convert(src, dst):
    from internvl_exp.models.convert import convert_checkpoint

    return convert_checkpoint(src, dst, show_progress=False)


def test_missing_source_tensor_is_named(tmp_path):
    from internvl_exp.errors import UserError

    w = write_original_checkpoint(tmp_path / "src", "qwen2", "300m")
    _edit_shard(w.path, "vision_model.encoder.layers.1.ls2")
    with pytest.raises(UserError, match=r"no source tensor for native key\(s\) model\.vision_tower\.encoder\.layer\.1\.lambda_2"):
        _convert(w.path, tmp_path / "dst")
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.partial-*"))


def test_extra_source_tensor_is_named(tmp_path):
    from internvl_exp.errors import UserError

    w = write_original_checkpoint(tmp_path / "src", "internlm2", "6b")
    _edit_shard(w.path, "language_model.model.layers.0.attention.wk_extra.weight", torch.ones(4))
    with pytest.raises(UserError, match=r"1 source tensor\(s\) would not be converted: "
                                        r"language_model\.model\.layers\.0\.attention\.wk_extra\.weight"):
        _convert(w.path, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_incomplete_expert_set_is_named(tmp_path):
    from internvl_exp.errors import UserError

    w = write_original_checkpoint(tmp_path / "src", "qwen3_moe", "300m")
    _edit_shard(w.path, "language_model.model.layers.1.mlp.experts.2.up_proj.weight")
    with pytest.raises(UserError, match=r"would not be converted: language_model\.model\.layers\.1\.mlp\.experts\.0\."):
        _convert(w.path, tmp_path / "dst")


def test_config_that_does_not_match_the_weights(tmp_path):
    from internvl_exp.errors import UserError

    w = write_original_checkpoint(tmp_path / "src", "qwen2", "300m")
    cfg = json.loads((w.path / "config.json").read_text())
    cfg["llm_config"]["intermediate_size"] = 100
    (w.path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"config.json: the config does not match the weights: .*mlp\.down_proj\.weight"):
        _convert(w.path, tmp_path / "dst")


def test_unsupported_llm_is_refused(tmp_path):
    from internvl_exp.errors import UserError

    w = write_original_checkpoint(tmp_path / "src", "qwen2", "300m")
    cfg = json.loads((w.path / "config.json").read_text())
    cfg["llm_config"]["architectures"] = ["MistralForCausalLM"]
    cfg["llm_config"]["model_type"] = "mistral"
    (w.path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"architecture 'MistralForCausalLM' is not supported .*InternLM2ForCausalLM"):
        _convert(w.path, tmp_path / "dst")


def test_written_files_are_checked_against_the_native_config(tmp_path):
    """The post-write check reads the output headers back: a shape, a key or a dtype that differs is reported."""
    from internvl_exp.errors import UserError
    from internvl_exp.models.convert.verify import check_written, written_tensors

    w = write_original_checkpoint(tmp_path / "src", "qwen2", "300m")
    _convert(w.path, tmp_path / "dst")
    got = written_tensors(tmp_path / "dst")
    key = "model.multi_modal_projector.linear_1.weight"
    check_written(tmp_path / "dst", got, {k: dt for k, (_, dt) in got.items()})  # consistent: passes
    bad_shape = {**got, key: ((1, 2), got[key][1])}
    with pytest.raises(UserError, match="wrong shape .*linear_1.weight"):
        check_written(tmp_path / "dst", bad_shape, {})
    with pytest.raises(UserError, match="missing model.extra"):
        check_written(tmp_path / "dst", {**got, "model.extra": ((1,), "float32")}, {})
    with pytest.raises(UserError, match="dtype changed .*linear_1.weight float32 \\(source bfloat16\\)"):
        check_written(tmp_path / "dst", got, {key: "bfloat16"})


def test_output_shards_are_no_larger_than_the_largest_source_shard(tmp_path):
    """The RAM bound: the writer buffers at most one output shard, sized by the largest source shard."""
    w = write_original_checkpoint(tmp_path / "src", "llama", "300m", num_shards=4)
    report = _convert(w.path, tmp_path / "dst")
    largest_src = max(p.stat().st_size for p in w.path.glob("*.safetensors"))
    outs = list((tmp_path / "dst").glob("model-*.safetensors"))
    assert len(outs) == report.shards_written >= 2
    header_slack = 16 * 1024  # the safetensors JSON header
    assert all(p.stat().st_size <= largest_src + header_slack for p in outs)


def test_non_internvl_dir_is_not_original_layout(tmp_path):
    from internvl_exp.models.convert import is_original_layout

    w = write_original_checkpoint(tmp_path / "src", "qwen2", "300m")
    assert is_original_layout(w.path)
    (tmp_path / "native").mkdir()
    (tmp_path / "native" / "config.json").write_text(json.dumps({"model_type": "internvl"}))
    assert not is_original_layout(tmp_path / "native") and not is_original_layout(tmp_path / "nowhere")


def test_rotary_buffers_are_dropped_by_name(tmp_path):
    w = write_original_checkpoint(tmp_path / "src", "internlm2", "300m")
    key = "language_model.model.layers.0.attention.rotary_emb.inv_freq"
    _edit_shard(w.path, key, torch.ones(4))
    report = _convert(w.path, tmp_path / "dst")
    assert list(report.dropped) == [key]


def test_stored_copy_of_a_tied_head_is_dropped(tmp_path):
    """llm_config says tied but the file also stores the head (some saves do): the model stays tied, the copy is
    accounted for as dropped rather than written or reported unused."""
    w = write_original_checkpoint(tmp_path / "src", "qwen2", "6b", tie=True)
    cfg = json.loads((w.path / "config.json").read_text())
    assert cfg["llm_config"]["tie_word_embeddings"] is True
    _edit_shard(w.path, "language_model.lm_head.weight", w.tensors["language_model.model.embed_tokens.weight"].clone())
    report = _convert(w.path, tmp_path / "dst")
    assert report.tie_word_embeddings is True
    assert list(report.dropped) == ["language_model.lm_head.weight"]
