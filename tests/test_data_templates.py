"""The four conversation templates: prompt text exactly as InternVL's conversation.py builds it
(golden strings from the reference), system message override and system turns, per-turn masks for every
template, BOS handling, and tokenisation that never drifts from the text."""

from __future__ import annotations

import random

import pytest

from internvl_exp.data.templates import IGNORE_INDEX, TEMPLATES, ConversationError, tokenize_conversation

SYS_25 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
SYS_LM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"

TWO_TURN = [
    {"from": "human", "value": "<image>\nWhat is shown?"},
    {"from": "gpt", "value": "A red square."},
    {"from": "human", "value": "Any other shapes?"},
    {"from": "gpt", "value": "No."},
]
TEXT_ONLY = [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi there."}]

# Transcribed from the reference's golden prompts (InternVL's own get_prompt() output).
GOLDEN = {
    ("internvl2_5", "image"): f"<|im_start|>system\n{SYS_25}<|im_end|>\n<|im_start|>user\n<image>\nWhat is shown?<|im_end|>\n"
    "<|im_start|>assistant\nA red square.<|im_end|>\n<|im_start|>user\nAny other shapes?<|im_end|>\n"
    "<|im_start|>assistant\nNo.<|im_end|>\n",
    ("internvl2_5", "text"): f"<|im_start|>system\n{SYS_25}<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
    "<|im_start|>assistant\nHi there.<|im_end|>\n",
    ("internlm2-chat", "image"): f"<|im_start|>system\n{SYS_LM}<|im_end|><|im_start|>user\n<image>\nWhat is shown?<|im_end|>"
    "<|im_start|>assistant\nA red square.<|im_end|><|im_start|>user\nAny other shapes?<|im_end|><|im_start|>assistant\nNo.<|im_end|>",
    ("internlm2-chat", "text"): f"<|im_start|>system\n{SYS_LM}<|im_end|><|im_start|>user\nHello<|im_end|><|im_start|>assistant\n"
    "Hi there.<|im_end|>",
    ("Hermes-2", "image"): f"<|im_start|>system\n{SYS_LM}<|im_end|><|im_start|>user\n<image>\nWhat is shown?<|im_end|>"
    "<|im_start|>assistant\nA red square.<|im_end|><|im_start|>user\nAny other shapes?<|im_end|><|im_start|>assistant\nNo.<|im_end|>",
    ("Hermes-2", "text"): f"<|im_start|>system\n{SYS_LM}<|im_end|><|im_start|>user\nHello<|im_end|><|im_start|>assistant\n"
    "Hi there.<|im_end|>",
    ("phi3-chat", "image"): f"<|system|>\n{SYS_LM}<|end|><|user|>\n<image>\nWhat is shown?<|end|><|assistant|>\nA red square.<|end|>"
    "<|user|>\nAny other shapes?<|end|><|assistant|>\nNo.<|end|>",
    ("phi3-chat", "text"): f"<|system|>\n{SYS_LM}<|end|><|user|>\nHello<|end|><|assistant|>\nHi there.<|end|>",
}
EOT = {"internvl2_5": "<|im_end|>", "internlm2-chat": "<|im_end|>", "Hermes-2": "<|im_end|>", "phi3-chat": "<|end|>"}
ALL = sorted(TEMPLATES)


def expand(text: str, counts) -> str:
    for n in counts:
        text = text.replace("<image>", "<img>" + "<IMG_CONTEXT>" * n + "</img>", 1)
    return text


def supervised_runs(tokenizer, out) -> list[str]:
    """The supervised stretches of a sample, decoded (labels must equal input_ids where supervised)."""
    runs, cur = [], []
    for tok, lab in zip(out["input_ids"], out["labels"]):
        if lab == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            assert lab == tok
            cur.append(tok)
    if cur:
        runs.append(cur)
    return [tokenizer.decode(r) for r in runs]


def test_all_four_templates_exist():
    assert ALL == sorted(["internvl2_5", "internlm2-chat", "Hermes-2", "phi3-chat"])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kind", ["image", "text"])
def test_prompt_text_matches_golden(name, kind):
    conv = TWO_TURN if kind == "image" else TEXT_ONLY
    assert TEMPLATES[name].render(conv) == GOLDEN[(name, kind)]


@pytest.mark.parametrize("name", ALL)
def test_tokens_decode_to_golden_text_with_image_expanded(name, tokenizer):
    out = tokenize_conversation(TWO_TURN, tokenizer, name, [5])
    assert len(out["input_ids"]) == len(out["labels"])
    assert tokenizer.decode(out["input_ids"]) == expand(GOLDEN[(name, "image")], [5])


@pytest.mark.parametrize("name", ALL)
def test_only_answers_and_end_of_turn_carry_loss(name, tokenizer):
    out = tokenize_conversation(TWO_TURN, tokenizer, name, [5])
    eot = EOT[name]
    assert supervised_runs(tokenizer, out) == [f"A red square.{eot}", f"No.{eot}"]
    text = tokenize_conversation(TEXT_ONLY, tokenizer, name)
    assert supervised_runs(tokenizer, text) == [f"Hi there.{eot}"]
    # Nothing of the image span is supervised.
    ctx = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert all(l == IGNORE_INDEX for t, l in zip(out["input_ids"], out["labels"]) if t == ctx)


def test_internvl2_5_newline_after_im_end_is_masked(tokenizer):
    out = tokenize_conversation(TWO_TURN, tokenizer, "internvl2_5", [5])
    ids, labels = out["input_ids"], out["labels"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    supervised_ends = [i for i, (t, l) in enumerate(zip(ids, labels)) if t == im_end and l != IGNORE_INDEX]
    assert len(supervised_ends) == 2
    for i in supervised_ends:
        assert ids[i + 1 : i + 1 + len(newline)] == newline
        assert all(l == IGNORE_INDEX for l in labels[i + 1 : i + 1 + len(newline)])
    assert ids[-len(newline):] == newline  # the prompt ends with "<|im_end|>\n"


@pytest.mark.parametrize("name", ALL)
def test_system_message_override(name, tokenizer):
    text = TEMPLATES[name].render(TEXT_ONLY, system_message="You are a test.")
    default = TEMPLATES[name].system_message
    assert text == GOLDEN[(name, "text")].replace(default, "You are a test.")
    out = tokenize_conversation(TEXT_ONLY, tokenizer, name, system_message="You are a test.")
    assert tokenizer.decode(out["input_ids"]) == text
    assert supervised_runs(tokenizer, out) == [f"Hi there.{EOT[name]}"]


@pytest.mark.parametrize("name", ALL)
def test_leading_system_turn_wins_and_is_not_supervised(name, tokenizer):
    conv = [{"from": "system", "value": "Answer tersely."}] + TEXT_ONLY
    text = TEMPLATES[name].render(conv, system_message="ignored when the line has a system turn")
    assert text == GOLDEN[(name, "text")].replace(TEMPLATES[name].system_message, "Answer tersely.")
    out = tokenize_conversation(conv, tokenizer, name)
    assert supervised_runs(tokenizer, out) == [f"Hi there.{EOT[name]}"]


@pytest.fixture(scope="module")
def bos_tokenizer():
    """The tiny tokenizer configured like InternLM2's: it prepends `<s>` to every encoding."""
    from transformers import AutoTokenizer

    from internvl_exp.models.tiny_tokenizer import ASSET_DIR

    tok = AutoTokenizer.from_pretrained(str(ASSET_DIR), bos_token="<s>", add_bos_token=True)
    assert tok("Hi")["input_ids"][0] == tok.convert_tokens_to_ids("<s>")  # it really adds a BOS
    return tok


@pytest.mark.parametrize("name", ALL)
def test_bos_first_once_and_masked(name, tokenizer, bos_tokenizer):
    plain = tokenize_conversation(TWO_TURN, tokenizer, name, [3])
    with_bos = tokenize_conversation(TWO_TURN, bos_tokenizer, name, [3])
    bos = bos_tokenizer.convert_tokens_to_ids("<s>")
    assert with_bos["input_ids"][0] == bos and with_bos["labels"][0] == IGNORE_INDEX
    assert with_bos["input_ids"].count(bos) == 1  # not once per turn
    assert with_bos["input_ids"][1:] == plain["input_ids"]
    assert with_bos["labels"][1:] == plain["labels"]


def test_internlm2_chat_strips_turn_values(tokenizer):
    padded = [{"from": t["from"], "value": "  " + t["value"] + " \n"} for t in TWO_TURN]
    assert TEMPLATES["internlm2-chat"].render(padded) == GOLDEN[("internlm2-chat", "image")]
    assert TEMPLATES["Hermes-2"].render(padded) != GOLDEN[("Hermes-2", "image")]  # only InternLM's path strips


def _random_conversation(rng: random.Random) -> tuple[list[dict], list[int]]:
    words = ["red", "square", "多模态", "?", "!", " ", "\n", "0", "Hello", "<ref>cat</ref><box>[[1,2,3,4]]</box>", "tab\tbed"]
    turns, counts = [], []
    if rng.random() < 0.3:
        turns.append({"from": "system", "value": "".join(rng.choice(words) for _ in range(rng.randint(1, 4)))})
    for _ in range(rng.randint(1, 4)):
        q = "".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        for _ in range(rng.randint(0, 2)):
            q = "<image>\n" + q
            counts.append(rng.randint(1, 9))
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": "".join(rng.choice(words) for _ in range(rng.randint(0, 6)))}]
    return turns, counts


@pytest.mark.parametrize("name", ALL)
def test_tokenisation_never_drifts_from_the_text(name, tokenizer):
    """Property-style: for random conversations, the ids decode to the rendered prompt and the supervised
    runs are exactly the answers plus the end-of-turn token (no 'tokenization mismatch' is possible)."""
    rng = random.Random(name)
    tpl = TEMPLATES[name]
    for _ in range(150):
        conv, counts = _random_conversation(rng)
        out = tokenize_conversation(conv, tokenizer, name, counts)
        assert tokenizer.decode(out["input_ids"]) == expand(tpl.render(conv), counts)
        answers = [(t["value"].strip() if tpl.strip_values else t["value"]) + EOT[name] for t in conv if t["from"] == "gpt"]
        runs = supervised_runs(tokenizer, out)
        # An empty answer's EOT directly follows the masked header, so runs and answers line up one to one.
        assert runs == answers


def test_fast_batch_encoding_equals_tokenizer_call(tokenizer):
    from internvl_exp.data.templates import _TokenIds

    ids = _TokenIds(tokenizer)
    assert ids._backend is not None  # the fast path is in use for the tiny tokenizer
    texts = ["Hello <|im_start|>user\n", "多模态 ok!", "\n\n", "<img></img><IMG_CONTEXT>", "a  b"]
    assert ids.encode(tokenizer, texts) == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    # A previous truncating call leaves truncation on in the backend: the fast path must not be used then.
    tokenizer("a b c d e f g h", truncation=True, max_length=2)
    assert tokenizer.backend_tokenizer.truncation is not None
    long = "What colour is the shape? " * 10
    assert ids.encode(tokenizer, [long]) == [tokenizer(long, add_special_tokens=False)["input_ids"]]
    assert len(ids.encode(tokenizer, [long])[0]) > 2


def test_errors_say_what_is_wrong(tokenizer):
    with pytest.raises(ConversationError, match="unknown template 'chatml'"):
        tokenize_conversation(TEXT_ONLY, tokenizer, "chatml")
    with pytest.raises(ConversationError, match="1 <image> placeholder.*but 2 image"):
        tokenize_conversation(TWO_TURN, tokenizer, "internvl2_5", [4, 4])
    with pytest.raises(ConversationError, match="alternate"):
        tokenize_conversation([TEXT_ONLY[0], TEXT_ONLY[0], TEXT_ONLY[1]], tokenizer, "internvl2_5")
    with pytest.raises(ConversationError, match="last turn"):
        tokenize_conversation(TEXT_ONLY[:1], tokenizer, "internvl2_5")
