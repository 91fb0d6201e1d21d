"""The converted tokenizer: the source's own tokenizer.json as is, or InternLM2's sentencepiece model through
sentencepiece_to_fast, and in both cases the named image tokens the native processor needs."""

from __future__ import annotations

import sys
import types

from original_checkpoints import TOKENIZER_SRC, write_original_checkpoint

TEXT = "Describe <img><IMG_CONTEXT></img> in detail.<|im_end|> 你好 🙂   spaces"


def test_tokenizer_json_ids_unchanged(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from internvl_exp.models.convert import convert_checkpoint

    w = write_original_checkpoint(tmp_path / "src", "qwen2", "300m")
    convert_checkpoint(w.path, tmp_path / "dst", show_progress=False)
    src_tok = PreTrainedTokenizerFast(tokenizer_file=str(w.path / "tokenizer.json"))
    out = AutoTokenizer.from_pretrained(str(tmp_path / "dst"))
    assert out(TEXT).input_ids == src_tok(TEXT).input_ids
    assert out.eos_token == "<|im_end|>" and out.pad_token == "<|endoftext|>"
    assert out.context_image_token == "<IMG_CONTEXT>" and out.video_token == "<video>"
    assert out.video_token_id not in (out.context_image_token_id, out.start_image_token_id, out.end_image_token_id)


def test_sentencepiece_source_goes_through_sentencepiece_to_fast(tmp_path, monkeypatch):
    """A source with only tokenizer.model (InternLM2 repos) is converted by sentencepiece_to_fast (owned by the
    tokenizer helper); the converter adds the named image tokens to what it returns."""
    from transformers import AutoProcessor, PreTrainedTokenizerFast

    from internvl_exp.models.convert import convert_checkpoint

    w = write_original_checkpoint(tmp_path / "src", "internlm2", "300m")
    (w.path / "tokenizer.json").unlink()
    (w.path / "tokenizer.model").write_bytes(b"stand-in: the fake converter below does not read it")
    calls = []

    def sentencepiece_to_fast(src):
        calls.append(src)
        return PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_SRC / "tokenizer.json"), eos_token="<|im_end|>")

    fake = types.ModuleType("internvl_exp.models.convert.sentencepiece")
    fake.sentencepiece_to_fast = sentencepiece_to_fast
    monkeypatch.setitem(sys.modules, "internvl_exp.models.convert.sentencepiece", fake)
    report = convert_checkpoint(w.path, tmp_path / "dst", show_progress=False)
    assert calls == [w.path]
    proc = AutoProcessor.from_pretrained(str(tmp_path / "dst"))
    assert proc.image_token_id == report.image_token_id == proc.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert proc.tokenizer(TEXT).input_ids == sentencepiece_to_fast(w.path)(TEXT).input_ids
