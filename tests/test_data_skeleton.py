"""Data path basics: masks cover only answers, collation, the demo data (golden prompt text: test_data_templates.py)."""

from __future__ import annotations

import json

import torch

CONV = [
    {"from": "human", "value": "<image>\nWhat is shown?"},
    {"from": "gpt", "value": "A red square."},
    {"from": "human", "value": "Any other shapes?"},
    {"from": "gpt", "value": "No."},
]


def test_only_answers_and_end_of_turn_carry_loss(tokenizer):
    from internvl_exp.data.templates import tokenize_conversation

    out = tokenize_conversation(CONV, tokenizer, "internvl2_5", [16])
    ids, labels = out["input_ids"], out["labels"]
    assert len(ids) == len(labels)
    assert ids.count(tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")) == 16
    supervised = tokenizer.decode([t for t in labels if t != -100])
    assert supervised == "A red square.<|im_end|>No.<|im_end|>"


def test_collator_pads_with_pad_id_and_masks_by_length(tokenizer):
    from internvl_exp.data.collator import Collator

    a = {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]), "pixel_values": torch.zeros(2, 3, 4, 4)}
    b = {"input_ids": torch.tensor([9]), "labels": torch.tensor([9]), "pixel_values": torch.ones(1, 3, 4, 4)}
    out = Collator(pad_token_id=99)([a, b])
    assert out["input_ids"].tolist() == [[5, 6, 7], [9, 99, 99]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [9, -100, -100]]
    assert out["pixel_values"].shape[0] == 3 and out["pixel_values"][2].eq(1).all()


def test_demo_data_is_internvl_format(demo_dir):
    meta = json.loads((demo_dir / "meta.json").read_text())
    assert set(meta) == {"shapes", "counting", "compare", "text"}
    kinds = set()
    for name, spec in meta.items():
        for line in (demo_dir / spec["annotation"]).read_text().splitlines():
            row = json.loads(line)
            image = row.get("image")
            kinds.add("multi" if isinstance(image, list) else "single" if image else "text")
            for rel in ([image] if isinstance(image, str) else image or []):
                assert (demo_dir / spec["root"] / rel).exists()
    assert kinds == {"single", "multi", "text"}


def test_demo_generation_is_deterministic(tmp_path):
    from internvl_exp.data.demo import generate_demo_data

    a, b = generate_demo_data(tmp_path / "a"), generate_demo_data(tmp_path / "b")
    for f in ("shapes.jsonl", "compare.jsonl", "images/counting_007.png"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
