"""The scan's fast token counts are exact: `WordCounter` against the Rust `encode` on fuzzed text, for the
byte-level BPE layouts it knows (GPT-2 ByteLevel regex, Qwen2's and Llama-3's Split + ByteLevel); `count_turns`
against `tokenize_turns` (the ids training sees) on every template; and a whole scan's rows (lengths,
supervised tokens, tiles, drops, truncation) against a per-line reference built from `tokenize_turns`, PIL's
image sizes and InternVL's grid rule."""

from __future__ import annotations

import json
import random
import re
import sys

import numpy as np
import pytest
from PIL import Image
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers

from conftest import ROOT, fixture
from data_media import conv, write_image, write_jsonl, write_video
from internvl_exp.data.dataset import ImageSettings, build_dataset
from internvl_exp.data.sources import load_entries
from internvl_exp.data.templates import IGNORE_INDEX, TEMPLATES, count_turns, refresh_token_counts, tokenize_turns
from internvl_exp.data.tiling import choose_grid
from internvl_exp.data.token_count import WordCounter
from internvl_exp.data.token_count import _byte_level_map as bytes_to_unicode

sys.path.insert(0, str(ROOT / "bench"))
import data_scale  # noqa: E402  (the benchmark's realistic line generator)

TINY = ROOT / "internvl_exp" / "models" / "assets" / "tiny_tokenizer" / "tokenizer.json"
GOLDEN = fixture("original_layout", "qwen2_vit300m", "tokenizer.json")  # OpenGVLab's Qwen2-style layout
QWEN2 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def _split_bytelevel(pattern: str) -> Tokenizer:
    """The tiny vocabulary behind Qwen2/Llama-3's pipeline: NFC, Split(regex, isolated), ByteLevel without regex."""
    t = Tokenizer.from_file(str(TINY))
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    return t


def _with_model(t: Tokenizer, **model) -> Tokenizer:
    spec = json.loads(t.to_str())
    spec["model"].update(model)
    return Tokenizer.from_str(json.dumps(spec))


def _tokenizers() -> dict[str, Tokenizer]:
    out = {"tiny (ByteLevel regex)": Tokenizer.from_file(str(TINY)), "qwen2 split": _split_bytelevel(QWEN2),
           "llama3 split": _with_model(_split_bytelevel(LLAMA3), ignore_merges=True)}
    nfkc = Tokenizer.from_file(str(TINY))
    nfkc.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])  # Rust's own normaliser
    nfkc.add_tokens([AddedToken("<norm>", normalized=True), AddedToken("é>", normalized=True)])  # matched after it
    out["nfkc+lowercase, normalised added tokens"] = nfkc
    out["golden qwen2_vit300m"] = Tokenizer.from_file(str(GOLDEN))
    return out


def _sentencepiece_tokenizers(root: Path) -> dict[str, Tokenizer]:
    """InternLM2's sentencepiece tokenizer as this project converts it (a real sentencepiece model trained here),
    with other sentencepiece settings, and the same vocabulary laid out as transformers converts Llama/Phi-3."""
    from test_convert_sentencepiece import make_internlm2_checkpoint

    from internvl_exp.models.convert.sentencepiece import sentencepiece_to_fast

    settings = {"internlm2": {}, "internlm2 nmt_nfkc, extra spaces removed": dict(normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True),
                "internlm2 user-defined pieces": dict(user_defined_symbols=["<ud1>", "图片"]), "internlm2 no dummy prefix": dict(add_dummy_prefix=False)}
    out = {name: sentencepiece_to_fast(make_internlm2_checkpoint(root / str(k), **kw)).backend_tokenizer
           for k, (name, kw) in enumerate(settings.items())}
    base = out["internlm2"]

    def variant(normalizer, pre_tokenizer) -> Tokenizer:
        t = Tokenizer.from_str(base.to_str())
        t.normalizer, t.pre_tokenizer = normalizer, pre_tokenizer
        return t

    out["llama/phi-3 legacy (Prepend, Replace)"] = variant(
        normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]), None)
    for scheme in ("first", "always", "never"):
        for split in (False, True):
            out[f"metaspace {scheme} split={split}"] = variant(None, pre_tokenizers.Metaspace(prepend_scheme=scheme, split=split))
    return out


# Pieces that stress the word split: contractions (either case), runs of spaces and newlines, digits, punctuation
# runs, added tokens and pieces of them, and other scripts: CJK, Cyrillic, Arabic digits, emoji, Unicode
# whitespace, characters a case-insensitive regex folds to ASCII (long s, Kelvin sign), composing sequences.
ALPHABET = list("abzXYZ0189 '\n\t\r.,!?-_<>|/") + ["'s", "'S", "'ll", "'D", "  ", "   ", "\n\n", " \n ", "<|im_start|>",
                                                     "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<|im_", "<ref>",
                                                     "é", "中文", "\u00a0", "\x1c", "\x0b", "ſ", "\u212a", "１２"]
MIXED = ["你好", "图片里有什么？", "，", "。", "人工智能实验室", "Привет, мир", "ёж", " 🙂", "🦄✨", "\U0001F600x", "\u3000",
         "\u2028", "\x85", "ﬁ", "ﬅ", "İ", "ß", "١٢٣", "e\u0301", ">\u0338", "\u200b", "\u2581", "\u2581\u2581",
         " \u2581", "<s>", "</s>", "[UNUSED_TOKEN_146]", "<norm>", "é>", "<ud1>", "Ω", "ǅ", "Ⅻ", "①", "\ud800"]


def _fuzz(n: int, seed: int = 0, mixed: bool = False) -> list[str]:
    rng = random.Random(seed)
    alphabet = ALPHABET + MIXED if mixed else ALPHABET
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(n)]
    words = data_scale.WORDS
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) + rng.choice([".", "?\n", "!  ", ""]) for _ in range(n // 4)]
    if mixed:
        texts += [data_scale.chinese_text(rng) for _ in range(n // 8)]
    return texts


def _rust_count(tok: Tokenizer, text: str) -> int | None:
    try:
        return len(tok.encode(text, add_special_tokens=False))
    except Exception:  # a lone surrogate: no count from either side
        return None


def _check_counts(tok: Tokenizer, texts: list[str]) -> WordCounter:
    counter = WordCounter(tok)
    assert counter.fast  # this layout takes the fast path (else the test would prove nothing)
    rust = []
    counter._rust_count = lambda text, f=counter._rust_count: rust.append(text) or f(text)
    for text in texts:
        want = _rust_count(tok, text)
        if want is None:
            with pytest.raises(Exception):
                counter.count(text)
            continue
        assert counter.count(text) == want, repr(text)
        assert counter.count(text) == want, repr(text)  # memoised
    # The Python pipeline counted the other scripts itself: the Rust tokenizer saw only texts it had to.
    hard = re.compile("[ſ\u212a\ud800]")
    assert all(hard.search(t) for t in rust), [t for t in rust if not hard.search(t)][:3]
    return counter


@pytest.mark.parametrize("name", list(_tokenizers()))
def test_word_counts_equal_the_rust_encode(name):
    _check_counts(_tokenizers()[name], _fuzz(3000, mixed=True))


@pytest.fixture(scope="module")
def sentencepiece_tokenizers(tmp_path_factory):
    return _sentencepiece_tokenizers(tmp_path_factory.mktemp("spm"))


def test_sentencepiece_counts_equal_the_rust_encode(sentencepiece_tokenizers):
    """Every sentencepiece layout, on mixed-script text: the chunks at "▁" and the runs between characters no
    merge can join are provably where BPE cuts, so their remembered counts add up to the whole."""
    texts = _fuzz(800, seed=2, mixed=True)
    for name, tok in sentencepiece_tokenizers.items():
        counter = _check_counts(tok, texts)
        assert counter._coarse is not None, name  # a real sentencepiece vocabulary: every "▁" run starts a chunk


@pytest.mark.parametrize("whole_words", [False, True])
def test_cjk_words_counted_in_runs_or_whole(sentencepiece_tokenizers, whole_words):
    """Long CJK words are counted once, not remembered: cut into runs, or (once a sample shows the vocabulary
    joins most neighbours) whole. Both ways against encode, for a byte-level and a sentencepiece vocabulary."""
    rng = random.Random(5)
    texts = [data_scale.chinese_text(rng) + rng.choice(["", " ok", "，🙂", "\u3000x"]) for _ in range(300)]
    for tok in (Tokenizer.from_file(str(TINY)), sentencepiece_tokenizers["internlm2"]):
        counter = WordCounter(tok)
        counter._whole_words = whole_words
        for text in texts:
            assert counter.count(text) == len(tok.encode(text, add_special_tokens=False)), text
        assert counter._whole_words == whole_words or counter._sampled[0] > 20_000


# Text in every UTF-8 length: Cyrillic and Greek (2 bytes), CJK, Hangul, Devanagari with combining signs (3),
# emoji and a CJK extension B character (4), with mixed whitespace and punctuation.
SCRIPTS = ["Привет мир, ёжик", "Ελληνικά γράμματα", "人工智能实验室的图片", "，。？！", "한국어 문장입니다", "हिन्दी पाठ",
           "🙂🦄✨👍🏽", "𠀋𠀍", "e\u0301a\u0300", "\u3000\u00a0\t\n  ", "ok 42 'll", "中文mixed文本123"]


def _mixed_script_text(rng: random.Random) -> str:
    return "".join(rng.choice(SCRIPTS + MIXED[:-1]) + rng.choice(["", " ", "\n", "，"]) for _ in range(rng.randint(1, 12)))


@pytest.fixture(scope="module")
def trained_byte_level():
    """A byte-level BPE trained here on mixed-script text: its merges join bytes across characters of every
    UTF-8 length (the cuts the byte-level runs rely on are then tested where they matter), as a real
    multilingual vocabulary's do."""
    from tokenizers import models, trainers

    rng = random.Random(7)
    corpus = [_mixed_script_text(rng) for _ in range(3000)] + [data_scale.chinese_text(rng) for _ in range(500)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|im_end|>"], show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in json.loads(tok.to_str())["model"]["merges"]]
    byte = {ch: b for b, ch in bytes_to_unicode().items()}
    # Merges that join a character's last byte to the next character's lead byte, for 2-, 3- and 4-byte leads.
    across = {byte[b[0]] >> 4 for a, b in merges if 0x80 <= byte[a[-1]] < 0xC0 and byte[b[0]] >= 0xC0}
    assert {0xC, 0xD} & across and 0xE in across and 0xF in across, across
    return tok


@pytest.mark.parametrize("layout", ["gpt2 regex", "qwen2 split + NFC", "llama3 split, ignore_merges"])
def test_byte_level_runs_equal_the_rust_encode(trained_byte_level, layout):
    """Text outside ASCII with a byte-level vocabulary is counted a whole text at a time: one token per byte
    plus a correction per run of characters a merge may join. Against encode on mixed-script text, for the
    layouts of GPT-2, Qwen2 and Llama-3."""
    tok = Tokenizer.from_str(trained_byte_level.to_str())
    if layout != "gpt2 regex":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2 if layout.startswith("qwen2") else LLAMA3), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        if "ignore_merges" in layout:
            tok = _with_model(tok, ignore_merges=True)
    rng = random.Random(11)
    texts = [_mixed_script_text(rng) for _ in range(1500)] + _fuzz(600, seed=3, mixed=True)
    counter = _check_counts(tok, texts)
    assert counter._byte_runs is not None  # the run regex was built (a free separator, merges)
    assert counter._text_lane == (layout != "llama3 split, ignore_merges")
    assert len(counter._run_corrections) > 100  # runs were found and remembered


def test_cuts_inside_words_are_exact_where_tokens_span_them():
    """A vocabulary whose tokens do cross "▁" and CJK characters: the cuts must then not be made there."""
    from tokenizers import models

    vocab = {c: i for i, c in enumerate(["<unk>", "\u2581", "a", "b", "中", "文", "x"])}
    merges = [("a", "\u2581"), ("a\u2581", "b"), ("中", "文"), ("\u2581", "\u2581")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    counter = WordCounter(tok)
    assert counter._coarse is None  # "a▁" is a token: a "▁" after "a" is no boundary
    for text in ["a b a  b", "中文中文 x中", "xa ba", "  a", "中文" * 9, "a b" * 5]:
        assert counter.count(text) == len(tok.encode(text).ids), text


def test_unknown_pipelines_fall_back_to_the_tokenizer():
    tok = Tokenizer.from_file(str(TINY))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # not reproduced: the Rust tokenizer counts
    counter = WordCounter(tok)
    assert not counter.fast
    for text in _fuzz(300, seed=1, mixed=True):
        if "\ud800" not in text:
            assert counter.count(text) == _rust_count(tok, text)


def _oracle(blocks):
    """(length, supervised, num_images) per turn from the token ids themselves."""
    return [(len(b["input_ids"]), sum(label != IGNORE_INDEX for label in b["labels"]), b["num_images"]) for b in blocks]


CONVERSATIONS = [
    conv("<image>\nDescribe the image.", "A red car parked near a tree."),
    conv("Image-1: <image>\nImage-2: <image>\nCompare them.", "The first is larger.", "And colours?", "Both   blue.\n\n"),
    conv("Text only, no images: what's 12+30?", "It's 42."),
    [{"from": "system", "value": "You are terse."}] + conv("Hi <|im_end|> there <ref>box</ref>", "  Hello!  "),
    conv("中文问题 <image>", "答案：是的。 Mixed ASCII and 中文, café."),
    conv("<image>", "Look: <image> (an image inside an answer)."),
    conv("\n\n  leading and trailing whitespace \t", "\r\nok\r\n"),
]


@pytest.fixture(scope="module")
def golden_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(GOLDEN))


@pytest.mark.parametrize("kind", ["tiny", "golden"])
@pytest.mark.parametrize("template", list(TEMPLATES))
def test_count_turns_equals_the_token_ids(request, kind, template):
    from internvl_exp.data.templates import IMAGE_PLACEHOLDER, _token_ids

    tokenizer = request.getfixturevalue("tokenizer" if kind == "tiny" else "golden_tokenizer")

    assert _token_ids(tokenizer).text_counter(tokenizer).__self__.fast  # the fast path is what is compared

    for convs in CONVERSATIONS:
        n_img = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in convs)
        images = [7 * (k + 1) for k in range(n_img)]
        for system in (None, "A custom system message."):
            expected = _oracle(tokenize_turns(convs, tokenizer, template, images, system))
            got = [(b["length"], b["supervised"], b["num_images"]) for b in count_turns(convs, tokenizer, template, images, system)]
            assert got == expected, (template, convs)


# --- a whole scan against a per-line reference ---------------------------------------------------------

SETTINGS = ImageSettings(tile_size=32, tokens_per_tile=4, max_dynamic_patch=6, min_num_frame=2, max_num_frame=3)


def _sample_lines(root):
    """The benchmark's realistic lines (single/multi-image, text-only, 1-4 turn pairs; English and Chinese) over a
    pool of small real JPEGs of several aspect ratios, plus video, non-ASCII, over-long and bad lines."""
    sizes = [(120, 40), (30, 90), (64, 64), (200, 50), (33, 33), (90, 60), (41, 150), (64, 20)]
    for i in range(len(data_scale.POOL_SIZES) * 4):  # the generator's pool names: it then keeps our images
        write_image(root / "images" / f"pool_{i:02d}.jpg", sizes[i % len(sizes)])
    write_video(root / "v.mp4", frames=10, fps=10)
    rows = [json.loads(line) for line in data_scale.generate(root, 240, seed=3).read_text().splitlines()]
    # Chinese lines too (byte-level text outside ASCII is counted by its runs): some long enough to be cut or dropped.
    rows += [json.loads(line) for line in data_scale.generate(root, 80, seed=5, lang="zh").read_text().splitlines()]
    long_answer = " ".join(data_scale.WORDS) * 3
    return rows + [
        {"video": "v.mp4", "conversations": conv("<video>\nWhat happens?", "A ball rolls.")},
        {"conversations": conv("Ünïcödé question — 你好?", "Réponse: ça va.")},
        {"image": "images/pool_00.jpg", "conversations": conv("Q?", long_answer * 4)},  # too long even cut: dropped
        {"image": "images/pool_01.jpg", "conversations": conv("<image>\nQ?", "Short.", "More?", long_answer * 4)},
        '{"conversations": [',  # bad JSON
        {"image": "images/nope.jpg", "conversations": conv("<image>\nQ?", "A.")},  # missing image
    ]


def _reference(root, tokenizer, rows, policy, max_len):
    """Per line: None (a problem) or (length, supervised, tiles, truncated, turns), from tokenize_turns."""
    out = []
    for row in rows:
        if isinstance(row, str) or any(str(p).endswith("nope.jpg") for p in np.atleast_1d(row.get("image", []))):
            out.append(None)
            continue
        convs = [dict(t) for t in row["conversations"]]
        if "video" in row:
            out.append("video")  # its frame count is drawn per line: checked against the dataset's own items
            continue
        images = row.get("image", [])
        images = [images] if isinstance(images, str) else images
        if images and not any("<image>" in t["value"] for t in convs):
            convs[0]["value"] = "<image>\n" * len(images) + convs[0]["value"]
        budget = max(1, SETTINGS.max_dynamic_patch // len(images)) if images else SETTINGS.max_dynamic_patch
        tiles = []
        for path in images:
            w, h = Image.open(root / path).size
            cols, rws = choose_grid(w, h, 1, budget, SETTINGS.tile_size)
            tiles.append(cols * rws + (cols * rws > 1))
        blocks = _oracle(tokenize_turns(convs, tokenizer, "internvl2_5", [n * SETTINGS.tokens_per_tile for n in tiles]))
        total = sum(b[0] for b in blocks)
        if total <= max_len:
            out.append((total, sum(b[1] for b in blocks), tiles, False, len(convs)))
            continue
        keep = len(blocks)
        while policy == "truncate" and keep > 3 and sum(b[0] for b in blocks[:keep]) > max_len:
            keep -= 2
        if policy == "drop" or sum(b[0] for b in blocks[:keep]) > max_len:
            out.append(None)
            continue
        n_img = sum(b[2] for b in blocks[:keep])
        out.append((sum(b[0] for b in blocks[:keep]), sum(b[1] for b in blocks[:keep]), tiles[:n_img], True, keep - 1))
    return out


@pytest.mark.parametrize("policy", ["drop", "truncate"])
def test_scan_rows_equal_a_per_line_reference(tmp_path, tokenizer, policy):
    root = tmp_path / "data"
    rows = _sample_lines(root)
    ann = write_jsonl(root / "d.jsonl", rows)
    entries = load_entries(None, {"d": {"annotation": str(ann), "root": str(root)}})
    max_len = 1500
    ds, report = build_dataset(entries, tokenizer, "internvl2_5", SETTINGS, max_len, length_policy=policy, on_error="skip")
    expected = _reference(root, tokenizer, rows, policy, max_len)
    r = ds.plan.rows
    planned = {int(r["line_no"][i]): i for i in range(len(ds.plan))}
    problems = {int(p.where.rsplit(":", 1)[1]): p.reason for p in report.problems}
    assert set(planned) | set(problems) == set(range(1, len(rows) + 1)) and not set(planned) & set(problems)
    assert sum(e is not None and e != "video" and e[3] for e in expected) == report.truncated
    assert (report.truncated > 0) == (policy == "truncate")
    for line_no, want in enumerate(expected, 1):
        if want is None:
            assert line_no in problems, line_no
            continue
        i = planned[line_no]
        if want == "video":  # the dataset's item is the oracle: its token count is the planned length
            item = ds.load_row(i)
            assert len(item["input_ids"]) == r["length"][i] and int(r["frames"][i]) == len(item["pixel_tiles"])
            continue
        got = (int(r["length"][i]), int(r["supervised"][i]), ds.plan.tiles_of(i), bool(r["truncated"][i]), int(r["turns"][i]))
        assert got == want, line_no
    assert {"invalid_json", "missing_media", "too_long"} <= set(problems.values())
    kinds = [(len(np.atleast_1d(row.get("image", []))), len(row["conversations"])) for row in rows if isinstance(row, dict)]
    assert {0, 1, 2} <= {k for k, _ in kinds} and {2, 8} <= {t for _, t in kinds}  # the sample has every shape
    print(policy, len(ds.plan), "planned,", report.truncated, "truncated,", dict(report.skipped))


def test_patterns_outside_the_rewrite_are_refused():
    from internvl_exp.data.token_count import GPT2_PATTERN, ascii_pattern

    assert ascii_pattern(GPT2_PATTERN) is not None and ascii_pattern(QWEN2) is not None
    for pattern in (r"^a|b", r"a$", r"\p{Lu}+", r"\h+", r"a++", r"(?>ab)", r"[a[b]]", "x*"):  # anchors differ, ...
        assert ascii_pattern(pattern) is None, pattern


def test_tokens_added_after_the_first_count_are_counted():
    from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

    tok = load_tiny_tokenizer()  # a private copy: the session's tokenizer stays as it is
    convs = conv("Say <newtoken> twice: <newtoken>.", "<newtoken> <newtoken>")
    count_turns(convs, tok, "internvl2_5")
    tok.add_tokens(["<newtoken>"])
    refresh_token_counts(tok)  # what the scan does at each chunk
    got = [(b["length"], b["supervised"], b["num_images"]) for b in count_turns(convs, tok, "internvl2_5")]
    assert got == _oracle(tokenize_turns(convs, tok, "internvl2_5"))
