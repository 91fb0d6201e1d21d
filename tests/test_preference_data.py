"""MPO preference data against InternVL's own LazySupervisedDataset output (golden samples/lineK.pt)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from golden_mpo import GOLDEN, converted
from internvl_exp.data.planner import ImageSettings
from internvl_exp.data.preference import (
    PreferenceDataError,
    PreferenceDataset,
    PreferenceEncoder,
    collate_pairs,
    parse_line,
    PairSkip,
)
from internvl_exp.data.sources import load_entries

# The fixture's geometry (InternVL's run: force_image_size 56, 4 tokens per tile, max_dynamic_patch 6).
SETTINGS = ImageSettings(tile_size=56, tokens_per_tile=4, max_dynamic_patch=12)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(converted("reference", tmp_path_factory.mktemp("mpo"))))


def _entries(base: Path = GOLDEN, **overrides):
    """The golden meta entry; its paths are relative to the fixture folder (InternVL's working directory)."""
    meta = json.loads((GOLDEN / "data" / "meta.json").read_text())
    inline = {name: {**spec, "root": str(base / spec["root"]), "annotation": str(base / spec["annotation"]),
                     **overrides} for name, spec in meta.items()}
    return load_entries(None, inline)


def _encoder(tokenizer, max_seq_length: int = 512) -> PreferenceEncoder:
    return PreferenceEncoder(tokenizer, "internvl2_5", SETTINGS, max_seq_length)


def test_every_golden_line_is_token_and_pixel_exact(tokenizer) -> None:
    # max_dynamic_patch 12 in SETTINGS: the meta entry's 6 must win, as in InternVL.
    entries = _entries()
    dataset = PreferenceDataset(entries, _encoder(tokenizer))
    assert len(dataset) == 7 and not dataset.skipped
    items = {}
    for i in range(len(dataset)):
        item = dataset[i]
        items[int(item["where"].rsplit(":", 1)[1]) - 1] = item
    assert sorted(items) == list(range(7))
    for k, item in items.items():
        golden = torch.load(GOLDEN / "samples" / f"line{k}.pt")
        for side in ("chosen", "rejected"):
            ids, labels = item[f"{side}_input_ids"], item[f"{side}_labels"]
            n = len(ids)
            assert torch.equal(ids, golden[f"{side}_input_ids"][:n]), (k, side)
            assert torch.equal(labels, golden[f"{side}_labels"][:n]), (k, side)
            # InternVL pads only the multi-image line (5) to max_seq_length; the rest of it is padding.
            rest_ids, rest_labels = golden[f"{side}_input_ids"][n:], golden[f"{side}_labels"][n:]
            assert (k == 5) == (len(rest_ids) > 0), k
            assert set(rest_ids.tolist()) <= {tokenizer.pad_token_id} and set(rest_labels.tolist()) <= {-100}
        if k == 6:  # text-only: InternVL encodes a blank image with image_flags 0; we send no pixels
            assert golden["image_flags"].tolist() == [0] and "pixel_tiles" not in item
            continue
        assert golden["image_flags"].eq(1).all()
        from internvl_exp.data.collator import pixel_values

        ours = pixel_values([item])
        assert ours.shape == golden["pixel_values"].shape, k
        assert (ours - golden["pixel_values"]).abs().max().item() < 1e-5, k


def test_collated_pairs_keep_id_zero_tokens_attended(tokenizer) -> None:
    encoder = _encoder(tokenizer)
    entries = _entries()
    text = json.dumps({"question": "Say it loud", "chosen": "Hello!", "rejected": "no"})
    assert 0 in tokenizer("!", add_special_tokens=False)["input_ids"]  # qwen2's id 0 is "!"
    item = encoder.load(entries[0], encoder.plan(entries[0], text))
    other = encoder.load(entries[0], encoder.plan(entries[0], (GOLDEN / "data" / "mpo_demo.jsonl").read_text()
                                                  .splitlines()[0]))
    batch = collate_pairs([item, other], tokenizer.pad_token_id)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 4 and batch["num_pairs"] == 2
    # Row order [chosen..., rejected...]; the "!" (id 0) of the first chosen answer is attended.
    assert (ids[0] == 0).any() and mask[0][ids[0] == 0].eq(1).all()
    assert mask.sum(1).tolist() == [len(item["chosen_input_ids"]), len(other["chosen_input_ids"]),
                                    len(item["rejected_input_ids"]), len(other["rejected_input_ids"])]
    assert batch["labels"][mask == 0].eq(-100).all() and ids[mask == 0].eq(tokenizer.pad_token_id).all()
    assert batch["pixel_values"].shape[0] == 1  # the image-pair's tile, once


@pytest.mark.parametrize("line, reason", [
    ('{"question": "q", "chosen": "a"}', "bad_pair"),
    ('{"conversations": []}', "bad_pair"),
    ('{"question": "q", "chosen": " ", "rejected": "b"}', "bad_pair"),
    ('[1, 2]', "invalid_json"),
    ('{"question": "q <image> <image>", "image": "x.png", "chosen": "a", "rejected": "b"}', "image_count_mismatch"),
    ('{"question": "q", "chosen": "a <image>", "rejected": "b"}', "image_count_mismatch"),
    ('{"question": "q", "image": 3, "chosen": "a", "rejected": "b"}', "bad_media_field"),
    ('{"question": "q", "video": "v.mp4", "chosen": "a", "rejected": "b"}', "bad_media_field"),
])
def test_bad_lines_are_named(line: str, reason: str) -> None:
    with pytest.raises(PairSkip) as e:
        parse_line(line)
    assert e.value.reason == reason


def test_placeholders_prepended_per_image() -> None:
    assert parse_line('{"question": "q", "image": "a.png", "chosen": "x", "rejected": "y"}').question == "<image>\nq"
    two = parse_line('{"question": "q", "image": ["a.png", "b.png"], "chosen": "x", "rejected": "y"}')
    assert two.question == "<image>\n<image>\nq" and two.images == ("a.png", "b.png")


def test_strict_errors_name_file_and_line_and_skip_counts(tokenizer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(GOLDEN / "data", data)
    jsonl = data / "mpo_demo.jsonl"
    good = jsonl.read_text().splitlines()
    bad = ['{"question": "q", "image": "nope.png", "chosen": "a", "rejected": "b"}', "{not json"]
    jsonl.write_text("\n".join(good[:2] + bad + good[2:]) + "\n")
    entries = _entries(tmp_path)
    with pytest.raises(PreferenceDataError) as e:
        PreferenceDataset(entries, _encoder(tokenizer))
    msg = str(e.value)
    assert f"{jsonl}:3: missing_media" in msg and f"{jsonl}:4: invalid_json" in msg and "2 problem(s)" in msg
    dataset = PreferenceDataset(entries, _encoder(tokenizer), on_error="skip")
    assert len(dataset) == 7 and dataset.skipped == {"missing_media": 1, "invalid_json": 1}
    # Too long for max_seq_length: dropped (never truncated) and counted, under strict too.
    short = PreferenceDataset(entries[:1], _encoder(tokenizer, max_seq_length=260), on_error="skip")
    assert short.skipped["too_long"] > 0
    assert (short.lengths <= 260).all()


def test_repeat_time_and_the_tile_budget_of_the_meta_entry(tokenizer) -> None:
    twice = PreferenceDataset(_entries(repeat_time=2), _encoder(tokenizer))
    assert len(twice) == 14 and sorted(twice.rows["line_no"][twice.epoch_order()].tolist()) == sorted(list(range(1, 8)) * 2)
    # A smaller per-dataset budget changes the tiles (line 5, 256x50, has 6 tiles at max_dynamic_patch 6).
    small = PreferenceDataset(_entries(max_dynamic_patch=2), _encoder(tokenizer))
    item = next(small[i] for i in range(len(small)) if small[i]["where"].endswith(":5"))
    assert len(item["pixel_tiles"]) == 3  # 2x1 + thumbnail


def test_media_broken_after_the_scan(tokenizer, tmp_path: Path) -> None:
    shutil.copytree(GOLDEN / "data", tmp_path / "data")
    strict = PreferenceDataset(_entries(tmp_path), _encoder(tokenizer))
    skip = PreferenceDataset(_entries(tmp_path), _encoder(tokenizer), on_error="skip")
    (tmp_path / "data" / "images" / "astronaut_48x48.png").write_bytes(b"not a png")  # jsonl line 1
    position = next(i for i in range(7) if strict.rows["line_no"][strict.epoch_order()[i]] == 1)
    with pytest.raises(PreferenceDataError, match=r"mpo_demo.jsonl:1: corrupt_media"):
        strict[position]
    served = skip[position]
    assert not served["where"].endswith(":1") and skip.load_failures.as_dict() == {"corrupt_media": 1}
