"""The Jinja chat templates render exactly what the training templates render, and a processor carrying
one turns a prompt with an image into the same ids as our dataset."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from internvl_exp.data.templates import TEMPLATES, ConversationError, get_template
from internvl_exp.models.chat_template import chat_template
from test_data_templates import GOLDEN, TEXT_ONLY, TWO_TURN

ALL = sorted(TEMPLATES)


def to_messages(conversations: list[dict], structured: bool) -> list[dict]:
    """Our conversation as transformers messages: string content as is, or leading `<image>\\n` as image parts."""
    role = {"human": "user", "gpt": "assistant", "system": "system"}
    out = []
    for turn in conversations:
        value = turn["value"]
        if not structured:
            out.append({"role": role[turn["from"]], "content": value})
            continue
        parts = []
        while value.startswith("<image>\n"):
            parts.append({"type": "image"})
            value = value[len("<image>\n"):]
        assert "<image>" not in value, "this helper only moves leading images into parts"
        parts.append({"type": "text", "text": value})
        out.append({"role": role[turn["from"]], "content": parts})
    return out


@pytest.fixture(scope="module")
def render(tokenizer):
    """Render through transformers' own apply_chat_template (its sandboxed Jinja environment)."""

    def _render(messages, template, add_generation_prompt=False, **kw):
        return tokenizer.apply_chat_template(
            messages, chat_template=chat_template(template, **kw), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    return _render


@pytest.mark.parametrize("name,kind", sorted(GOLDEN))
@pytest.mark.parametrize("structured", [False, True], ids=["string", "parts"])
def test_golden_prompts_byte_for_byte(render, name, kind, structured):
    conv = TWO_TURN if kind == "image" else TEXT_ONLY
    messages = to_messages(conv, structured)
    assert render(messages, name, image_token="<image>") == GOLDEN[(name, kind)]
    # As the processor sees it: each image is its placeholder token, expanded later.
    assert render(messages, name) == GOLDEN[(name, kind)].replace("<image>", "<IMG_CONTEXT>")


def _random_conversation(rng: random.Random) -> list[dict]:
    words = ["What", "is", "shown", "图片", "里", "有什么", "？", "a", "red", "square", "🙂", "2+2=4", "\n", "  ", "\t"]

    def text():
        s = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        return rng.choice(["", " ", "\n"]) + s + rng.choice(["", " ", "\n", "  "])  # internlm2-chat strips these

    conv = []
    if rng.random() < 0.3:
        conv.append({"from": "system", "value": rng.choice(["You are a helpful assistant.", "你是一个助手。", ""])})
    for _ in range(rng.randint(1, 4)):
        conv.append({"from": "human", "value": "<image>\n" * rng.choice([0, 0, 1, 2, 3]) + text()})
        conv.append({"from": "gpt", "value": text()})
    return conv


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("structured", [False, True], ids=["string", "parts"])
def test_any_conversation_renders_like_the_training_template(render, name, structured):
    """Single and multiple images per turn, multi-turn, system turns, stray whitespace, Chinese, emoji."""
    rng = random.Random(name)
    tpl = get_template(name)
    for _ in range(40):
        conv = _random_conversation(rng)
        assert render(to_messages(conv, structured), name, image_token="<image>") == tpl.render(conv)


@pytest.mark.parametrize("name", ALL)
def test_system_message_override_like_data_system_message(render, name):
    tpl = get_template(name)
    messages = to_messages(TWO_TURN, True)
    got = render(messages, name, image_token="<image>", system_message="Be brief.")
    assert got == tpl.render(TWO_TURN, system_message="Be brief.")
    assert "Be brief." in got and tpl.system_message not in got
    # A system turn in the conversation still wins, as in training.
    with_turn = [{"from": "system", "value": "Turn wins."}, *TWO_TURN]
    assert render(to_messages(with_turn, True), name, image_token="<image>", system_message="Be brief.") == tpl.render(
        with_turn, system_message="Be brief."
    )


@pytest.mark.parametrize("name", ALL)
def test_generation_prompt_is_the_training_text_up_to_the_answer(render, name):
    tpl = get_template(name)
    conv = TWO_TURN
    segments = tpl.turn_segments(conv)
    # Everything before the last answer: all turns but the last, then the assistant header.
    expected = "".join(text for turn in segments[:-1] for text, _ in turn) + segments[-1][0][0]
    assert segments[-1][0][0] == tpl.assistant_prefix
    got = render(to_messages(conv[:-1], True), name, image_token="<image>", add_generation_prompt=True)
    assert got == expected


@pytest.mark.parametrize("name", ALL)
def test_assistant_mask_is_the_supervised_part(tokenizer, name):
    """return_assistant_tokens_mask marks exactly the tokens our labels supervise (answer + end of turn)."""
    from internvl_exp.data.templates import IGNORE_INDEX, tokenize_conversation

    conv = [TWO_TURN[0] | {"value": "What is shown?"}, *TWO_TURN[1:]]
    out = tokenizer.apply_chat_template(
        to_messages(conv, False), chat_template=chat_template(name), tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ours = tokenize_conversation(conv, tokenizer, name)
    assert out["input_ids"] == ours["input_ids"]
    assert out["assistant_masks"] == [int(label != IGNORE_INDEX) for label in ours["labels"]]


def test_bad_messages_fail_clearly(render):
    with pytest.raises(Exception, match="unexpected role tool"):
        render([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}], "internvl2_5")
    with pytest.raises(Exception, match="not video"):
        render([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "hi"}]}], "internvl2_5")
    with pytest.raises(ConversationError, match="unknown template"):
        chat_template("vicuna")


def _processor(tokenizer, template: str, tile: int, tokens_per_tile: int):
    from internvl_exp.models.loading import build_processor

    model_cfg = SimpleNamespace(normalize_type="imagenet", image_size=tile, min_dynamic_patch=1, max_dynamic_patch=6,
                                template=template)
    processor = build_processor(model_cfg, tokenizer, tokens_per_tile)
    assert processor.chat_template == chat_template(template)  # every built processor carries its template
    return processor


@pytest.fixture(scope="module")
def internlm2_tokenizer(tmp_path_factory):
    """A real sentencepiece tokenizer laid out like InternLM2's, converted (dummy prefix, BOS)."""
    from internvl_exp.models.convert.sentencepiece import sentencepiece_to_fast
    from test_convert_sentencepiece import make_internlm2_checkpoint

    return sentencepiece_to_fast(make_internlm2_checkpoint(tmp_path_factory.mktemp("internlm2")))


@pytest.mark.parametrize("name", ["internvl2_5", "internlm2-chat"])
@pytest.mark.parametrize("kind", ["tiny", "internlm2"])
def test_saved_processor_keeps_the_template_and_matches_the_dataset_ids(tmp_path, request, kind, name):
    from PIL import Image
    from transformers import AutoProcessor

    from data_media import conv, write_image, write_jsonl
    from internvl_exp.data.dataset import ImageSettings, build_dataset
    from internvl_exp.data.sources import load_entries

    tokenizer = request.getfixturevalue("tokenizer" if kind == "tiny" else "internlm2_tokenizer")
    tile, per_tile = 32, 4
    _processor(tokenizer, name, tile, per_tile).save_pretrained(tmp_path / "final")
    processor = AutoProcessor.from_pretrained(str(tmp_path / "final"))
    assert processor.chat_template == chat_template(name)

    write_image(tmp_path / "wide.png", (96, 32), (255, 0, 0))  # 3x1 + thumbnail = 4 tiles
    write_image(tmp_path / "one.png", (32, 32), (0, 255, 0))  # 1 tile
    rows = [
        {"image": "wide.png", "conversations": conv("<image>\nWhat is shown?", "A red square.")},
        {"image": ["wide.png", "one.png"], "conversations": conv("<image>\n<image>\nCompare them.", "Red, then green.")},
    ]
    ann = write_jsonl(tmp_path / "c.jsonl", rows)
    entries = load_entries(None, {"c": {"annotation": str(ann), "root": str(tmp_path)}})
    ds, _ = build_dataset(entries, tokenizer, name, ImageSettings(tile_size=tile, tokens_per_tile=per_tile, max_dynamic_patch=6), 4096)
    img_start, img_end, ctx = tokenizer.convert_tokens_to_ids(["<img>", "</img>", "<IMG_CONTEXT>"])
    for i, row in enumerate(rows):
        files = row["image"] if isinstance(row["image"], list) else [row["image"]]
        images = [Image.open(tmp_path / f).convert("RGB") for f in files]
        messages = to_messages(row["conversations"], True)
        text = processor.apply_chat_template(messages, tokenize=False)
        assert text == get_template(name).render(row["conversations"]).replace("<image>", "<IMG_CONTEXT>")
        got = processor(text=text, images=images)
        ours = ds[i]["input_ids"].tolist()
        assert got["input_ids"][0] == ours
        assert ours.count(img_start) == ours.count(img_end) == len(images)
        # The tiles behind the spans agree too: as many as our dataset loads, one span of tokens each.
        assert len(got["pixel_values"]) == len(ds[i]["pixel_tiles"]) == ours.count(ctx) // per_tile
        # Inference: the same prompt up to the answer, with the generation prompt.
        prompt = processor.apply_chat_template(messages[:-1], add_generation_prompt=True)
        n = len(processor(text=prompt, images=images)["input_ids"][0])
        assert ours[:n] == processor(text=prompt, images=images)["input_ids"][0]


@pytest.mark.parametrize("name", ["internvl2_5", "internlm2-chat"])
@pytest.mark.parametrize("kind", ["tiny", "internlm2"])
def test_scan_counts_equal_the_tokenised_turns(request, kind, name):
    """The pre-flight scan's counts (count_turns) are what loading tokenises (tokenize_turns), turn by turn,
    also where the header and answer are one text (a sentencepiece tokenizer's dummy prefix)."""
    from internvl_exp.data.templates import IGNORE_INDEX, count_turns, tokenize_turns

    tok = request.getfixturevalue("tokenizer" if kind == "tiny" else "internlm2_tokenizer")
    rng = random.Random(7)
    for _ in range(20):
        conv = _random_conversation(rng)
        n_images = sum(turn["value"].count("<image>") for turn in conv)
        images = [rng.randint(1, 40) for _ in range(n_images)]
        counts = count_turns(conv, tok, name, images)
        blocks = tokenize_turns(conv, tok, name, images)
        assert counts == [{"length": len(b["input_ids"]),
                           "supervised": sum(l != IGNORE_INDEX for l in b["labels"]),
                           "num_images": b["num_images"]} for b in blocks]
