"""InternLM2's sentencepiece tokenizer converted to a fast tokenizer gives the original ids.

A real sentencepiece model is trained here (offline, byte fallback on) and laid out like an InternLM2
checkpoint: the last six pieces are `[UNUSED_TOKEN_N]` renamed to `<|plugin|>` ... `<|im_start|>` by
tokenizer_config.json, InternVL's nine image/grounding tokens follow the vocabulary. The oracle is
`sentencepiece.SentencePieceProcessor` applied the way InternLM2Tokenizer applies it: added tokens split
out of the text first (longest match), each piece of text between them encoded on its own, BOS first.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import sentencepiece as spm  # the oracle (pyproject `test` extra)

from internvl_exp.data.templates import IMG_CONTEXT, IMG_END, IMG_START, get_template
from internvl_exp.models.convert.sentencepiece import TokenizerConversionError, sentencepiece_to_fast

INTERNLM2_RENAMED = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is shown in the image? A red square.",
    "Describe the picture briefly. There are three objects: a circle, a triangle and a star.",
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。",
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
    "图片里有什么？一个红色的正方形。数字 123 4567，标点：，。！？",
    "def add(x, y):\n    return x + y\n\n\tif x:\n\t\tpass\n",
    "Hello world!  Two  spaces.   Three spaces.    Four. user\nassistant\nsystem\n",
    "Emoji are rare: 🙂 and numbers 2024-12-01, prices $3.50, e-mail a.b@c.org",
]

SUITE = [
    "Hello",
    "The quick brown fox jumps over the lazy dog.",
    "图片里有什么？一个红色的正方形。",
    "混合 text 和中文，英文名叫InternVL, ok",
    "emoji 🙂😀🎉 and rare 🦄 ✨",
    "ünïcödé ﬁ ① Ⅻ ｆｕｌｌｗｉｄｔｈ",
    "  two leading spaces",
    " one leading space",
    "trailing spaces   ",
    "runs    of     spaces",
    "\ttab\t\tand\t\t\ttabs",
    "\n\nnewlines\n\n\nand\r\nCRLF\n",
    " \n \t mixed \t\n ",
    "   ",
    "\n",
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>  spaced  <|im_end|>  <|im_start|>\n",
    "text<|im_end|>text<|action_start|><|plugin|>",
    "<img><IMG_CONTEXT><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is shown?",
    "<img>" + "<IMG_CONTEXT>" * 40 + "</img>",
    "<ref>the cat</ref><box>[[1, 2, 3, 4]]</box> <quad></quad>",
    "<s>bos in text</s> and <unk>",
    "<im_start> is not a token, <|im_start is not either",
    "[UNUSED_TOKEN_146] is the piece renamed to <|im_start|>",
]


def _train(tmp: Path, **overrides) -> bytes:
    import io

    kwargs = dict(
        model_type="bpe", vocab_size=420, byte_fallback=True, character_coverage=0.9995,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        split_digits=True, allow_whitespace_only_pieces=True, minloglevel=2,
    )
    kwargs.update(overrides)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_CORPUS * 20), model_writer=out, **kwargs)
    return out.getvalue()


def make_internlm2_checkpoint(tmp: Path, **trainer_overrides) -> Path:
    """tokenizer.model + tokenizer_config.json + special_tokens_map.json + added_tokens.json, InternLM2 style."""
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(_train(tmp, **trainer_overrides))
    first_renamed = len(proto.pieces)
    for k in range(len(INTERNLM2_RENAMED)):  # InternLM2's vocabulary ends with [UNUSED_TOKEN_141..146]
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"[UNUSED_TOKEN_{141 + k}]", -1e4 - k, 1
    n = len(proto.pieces)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tokenizer.model").write_bytes(proto.SerializeToString())
    entries = [(0, "<unk>"), (1, "<s>"), (2, "</s>")]
    entries += [(first_renamed + k, t) for k, t in enumerate(INTERNLM2_RENAMED)]
    entries += [(n + k, t) for k, t in enumerate(INTERNVL_TOKENS)]
    decoder = {
        str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        for i, c in entries
    }
    names = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    config = {
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "added_tokens_decoder": decoder, "additional_special_tokens": INTERNLM2_RENAMED,
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": 4096, **names,
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    (tmp / "special_tokens_map.json").write_text(json.dumps({**names, "additional_special_tokens": INTERNLM2_RENAMED}))
    (tmp / "added_tokens.json").write_text(json.dumps({t: n + k for k, t in enumerate(INTERNVL_TOKENS)}))
    return tmp


class SlowInternLM2:
    """The oracle: sentencepiece used as InternLM2Tokenizer uses it (independent of the converter)."""

    def __init__(self, ckpt: Path):
        self.sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
        decoder = json.loads((ckpt / "tokenizer_config.json").read_text())["added_tokens_decoder"]
        self.added = {v["content"]: int(k) for k, v in decoder.items()}
        self.flags = {v["content"]: v for v in decoder.values()}
        self.added.update(json.loads((ckpt / "added_tokens.json").read_text()))
        # Longest added token first: the regex then takes the longest match at the leftmost position.
        self.split_re = re.compile("|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)))

    def encode(self, text: str, bos: bool = True) -> list[int]:
        # Split out added tokens, then strip around those with lstrip/rstrip as transformers' slow
        # tokenizer does (rstrip: the next chunk loses its leading whitespace; lstrip: the previous its trailing).
        segments, pos = [], 0
        for m in self.split_re.finditer(text):
            segments += [text[pos : m.start()], m.group()]
            pos = m.end()
        segments.append(text[pos:])
        for i in range(1, len(segments), 2):
            flags = self.flags.get(segments[i], {})
            if flags.get("rstrip"):
                segments[i + 1] = segments[i + 1].lstrip()
            if flags.get("lstrip"):
                segments[i - 1] = segments[i - 1].rstrip()
        ids = [self.sp.bos_id()] if bos else []
        for i, seg in enumerate(segments):
            if i % 2:
                ids.append(self.added[seg])
            elif seg:
                ids += [self.added.get(p, self.sp.piece_to_id(p)) for p in self.sp.encode(seg, out_type=str)]
        return ids


def _rendered_internlm2_prompt() -> str:
    conv = [
        {"from": "human", "value": "<image>\nWhat is shown?"},
        {"from": "gpt", "value": "A red square."},
        {"from": "human", "value": "图里还有别的吗？ "},
        {"from": "gpt", "value": "没有。"},
    ]
    text = get_template("internlm2-chat").render(conv)
    return text.replace("<image>", IMG_START + IMG_CONTEXT * 8 + IMG_END)


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    atoms = list("abcxyz AEIOU.,!?0123") + ["  ", "   ", "\t", "\n", "\n\n", " \n", "你", "好", "图片", "。", "，",
                                              "🙂", "🦄", "é", "ﬁ", "the ", "Intern", "VL"]
    atoms += INTERNLM2_RENAMED + INTERNVL_TOKENS + ["<s>", "</s>"]
    return ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 25))) for _ in range(n)]


@pytest.fixture(scope="module")
def internlm2(tmp_path_factory):
    ckpt = make_internlm2_checkpoint(tmp_path_factory.mktemp("internlm2"))
    return ckpt, sentencepiece_to_fast(ckpt), SlowInternLM2(ckpt)


@pytest.mark.parametrize("text", SUITE + ["<FULL_PROMPT>"])
def test_ids_equal_the_slow_tokenizer(internlm2, text):
    _, fast, slow = internlm2
    if text == "<FULL_PROMPT>":
        text = _rendered_internlm2_prompt()
    assert fast(text)["input_ids"] == slow.encode(text)
    assert fast(text, add_special_tokens=False)["input_ids"] == slow.encode(text, bos=False)


def test_random_mixtures_equal_the_slow_tokenizer(internlm2):
    _, fast, slow = internlm2
    texts = _random_texts(400)
    got = fast(texts)["input_ids"]
    mismatches = [(t, g, slow.encode(t)) for t, g in zip(texts, got) if g != slow.encode(t)]
    assert not mismatches, mismatches[:3]


def test_special_tokens_and_ids(internlm2):
    ckpt, fast, slow = internlm2
    n = slow.sp.get_piece_size()
    # Renamed InternLM2 pieces keep their ids inside the vocabulary; InternVL's follow it in order.
    for k, t in enumerate(INTERNLM2_RENAMED):
        assert fast.convert_tokens_to_ids(t) == n - 6 + k
    for k, t in enumerate(INTERNVL_TOKENS):
        assert fast.convert_tokens_to_ids(t) == n + k
    # One token more than the checkpoint: the video placeholder the processor needs, after the last id.
    assert len(fast) == n + len(INTERNVL_TOKENS) + 1
    assert (fast.video_token, fast.video_token_id) == ("<video>", n + len(INTERNVL_TOKENS))
    assert len(sentencepiece_to_fast(ckpt, add_video_token=False)) == n + len(INTERNVL_TOKENS)
    assert (fast.bos_token, fast.eos_token, fast.pad_token, fast.unk_token) == ("<s>", "</s>", "</s>", "<unk>")
    assert (fast.bos_token_id, fast.eos_token_id, fast.unk_token_id) == (slow.sp.bos_id(), slow.sp.eos_id(), slow.sp.unk_id())
    # The named tokens transformers' InternVLProcessor reads.
    assert (fast.start_image_token, fast.end_image_token, fast.context_image_token) == ("<img>", "</img>", "<IMG_CONTEXT>")
    assert fast.context_image_token_id == n + 2
    assert fast.model_max_length == 4096
    # Byte fallback: a character outside the vocabulary becomes its UTF-8 bytes, never <unk>.
    ids = fast("🦄", add_special_tokens=False)["input_ids"]
    assert fast.unk_token_id not in ids
    assert fast.convert_ids_to_tokens(ids)[-4:] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x84>"]


@pytest.mark.parametrize("text", SUITE + _random_texts(100, seed=1))
def test_decode_round_trips(internlm2, text):
    _, fast, slow = internlm2
    ids = fast(text)["input_ids"]
    assert fast.decode(ids, skip_special_tokens=False) == "<s>" + text
    # Text alone decodes like sentencepiece itself.
    plain = slow.split_re.sub("", text)
    plain_ids = fast(plain, add_special_tokens=False)["input_ids"]
    assert fast.decode(plain_ids) == slow.sp.decode(plain_ids)


def test_save_and_reload_keeps_the_ids(internlm2, tmp_path):
    from transformers import AutoTokenizer

    _, fast, slow = internlm2
    fast.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    texts = SUITE + [_rendered_internlm2_prompt()] + _random_texts(100, seed=2)
    assert again(texts)["input_ids"] == [slow.encode(t) for t in texts]
    assert again.context_image_token_id == fast.context_image_token_id


def test_a_processor_built_on_it_expands_images(internlm2):
    """transformers' InternVLProcessor accepts the converted tokenizer (it needs the four named tokens)."""
    from types import SimpleNamespace

    from PIL import Image

    from internvl_exp.models.loading import build_processor

    _, fast, slow = internlm2
    cfg = SimpleNamespace(normalize_type="imagenet", image_size=32, min_dynamic_patch=1, max_dynamic_patch=6,
                          template="internlm2-chat")
    processor = build_processor(cfg, fast, 4)
    text = "<|im_start|>user\n<IMG_CONTEXT>\nWhat is shown?<|im_end|>"
    out = processor(text=text, images=[Image.new("RGB", (32, 32), (255, 0, 0))])
    expanded = text.replace("<IMG_CONTEXT>", "<img>" + "<IMG_CONTEXT>" * 4 + "</img>")
    assert out["input_ids"][0] == slow.encode(expanded)


@pytest.mark.parametrize("name", ["internlm2-chat", "internvl2_5"])
def test_training_path_tokenises_like_internvl(internlm2, name):
    """Our dataset's ids for an InternLM2 tokenizer are InternVL's: internlm2-chat tokenises the whole prompt
    at once (preprocess_internlm), internvl2_5 each turn on its own with one BOS (preprocess_internvl2_5).
    Both equal the slow tokenizer on the full text, so training sees what inference (the processor) sees:
    no dummy-prefix "▁" in front of the answers."""
    from internvl_exp.data.templates import IGNORE_INDEX, tokenize_conversation

    _, fast, slow = internlm2
    conv = [
        {"from": "human", "value": "<image>\n图里有什么？"},
        {"from": "gpt", "value": "A red square."},
        {"from": "human", "value": "And now?"},
        {"from": "gpt", "value": "没有了。"},
    ]
    out = tokenize_conversation(conv, fast, name, [4])
    tpl = get_template(name)
    image = IMG_START + IMG_CONTEXT * 4 + IMG_END
    if name == "internlm2-chat":
        expected = slow.encode(tpl.render(conv).replace("<image>", image))
    else:
        turns = ["".join(text for text, _ in turn).replace("<image>", image) for turn in tpl.turn_segments(conv)]
        expected = [slow.sp.bos_id()] + [i for turn in turns for i in slow.encode(turn, bos=False)]
    assert out["input_ids"] == expected
    runs, cur = [], []
    for tok, lab in zip(out["input_ids"], out["labels"]):
        if lab != IGNORE_INDEX:
            cur.append(tok)
        elif cur:
            runs, cur = runs + [cur], []
    runs += [cur] if cur else []
    assert [fast.decode(r) for r in runs] == ["A red square.<|im_end|>", "没有了。<|im_end|>"]


@pytest.mark.parametrize(
    "trainer",
    [
        dict(normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True),
        dict(add_dummy_prefix=False),
        dict(normalization_rule_name="nmt_nfkc"),  # keeps space runs: "\r\n" is two spaces, as in sentencepiece
        dict(user_defined_symbols=["<ud1>", "[[x]]"], remove_extra_whitespaces=True),
    ],
    ids=["nfkc-strip-spaces", "no-dummy-prefix", "nfkc", "user-defined"],
)
def test_other_sentencepiece_settings_are_reproduced(tmp_path, trainer):
    ckpt = make_internlm2_checkpoint(tmp_path / "ckpt", **trainer)
    fast, slow = sentencepiece_to_fast(ckpt), SlowInternLM2(ckpt)
    texts = SUITE + _random_texts(200, seed=3) + ["a<ud1>b [[x]]c  <ud1>", "<ud1>", " <ud1> ", "<img><ud1>[[x]][[x]]", "<ud1><|im_end|>x"]
    assert fast(texts)["input_ids"] == [slow.encode(t) for t in texts]


def test_lstrip_rstrip_flags_strip_like_the_slow_tokenizer(tmp_path):
    ckpt = make_internlm2_checkpoint(tmp_path / "strip")
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    for entry in cfg["added_tokens_decoder"].values():
        if entry["content"] == "<ref>":
            entry["rstrip"] = True
        if entry["content"] == "</ref>":
            entry["lstrip"] = True
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    fast, slow = sentencepiece_to_fast(ckpt), SlowInternLM2(ckpt)
    texts = ["a <ref>  the cat \n </ref>  b", "<ref>\t\tx</ref>", " <ref> </ref> ", "<ref></ref>"]
    # The flags do something: whitespace after <ref> and before </ref> is eaten.
    assert fast("<ref>  x \n</ref>")["input_ids"] == fast("<ref>x</ref>")["input_ids"]
    assert fast(texts)["input_ids"] == [slow.encode(t) for t in texts]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(TokenizerConversionError, match="tokenizer.model"):
        sentencepiece_to_fast(tmp_path)
    ckpt = make_internlm2_checkpoint(tmp_path / "gap")
    added = json.loads((ckpt / "added_tokens.json").read_text())
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    n = min(added.values())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) < n}
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    (ckpt / "added_tokens.json").write_text(json.dumps({"<img>": n + 1}))  # a gap at n
    with pytest.raises(TokenizerConversionError, match="without gaps"):
        sentencepiece_to_fast(ckpt)
    cfg["bos_token"] = "</s>"
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    (ckpt / "added_tokens.json").write_text(json.dumps({"<img>": n}))
    with pytest.raises(TokenizerConversionError, match="bos_token"):
        sentencepiece_to_fast(ckpt)


def test_unigram_models_are_refused(tmp_path):
    ckpt = make_internlm2_checkpoint(tmp_path / "uni", model_type="unigram")
    with pytest.raises(TokenizerConversionError, match="not BPE"):
        sentencepiece_to_fast(ckpt)
