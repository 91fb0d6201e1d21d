"""Data policies: length (drop / truncate, never a partial image span), repeat_time, mixture weights,
and every bad-data reason under both on_error policies, at scan time and at load time."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from data_media import conv, pixels, write_frame_folder, write_image, write_jsonl, write_video
from internvl_exp.data.collator import Collator
from internvl_exp.data.dataset import DataError, ImageSettings, build_dataset
from internvl_exp.data.mixture import MixtureError, mix, quotas
from internvl_exp.data.planner import REASONS
from internvl_exp.data.sources import DataConfigError, apply_repeat_time, load_entries
from internvl_exp.data.templates import IGNORE_INDEX, TEMPLATES

TILE, TOKENS = 32, 4
SETTINGS = ImageSettings(tile_size=TILE, tokens_per_tile=TOKENS, max_dynamic_patch=4, min_num_frame=2, max_num_frame=4)


def build(tmp_path, tokenizer, datasets, max_seq_length=4096, **kw):
    """datasets: {name: (rows, spec)}; annotation files are written under tmp_path, media root is tmp_path."""
    inline = {}
    for name, (rows, spec) in datasets.items():
        ann = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        inline[name] = {"annotation": str(ann), "root": str(tmp_path), **spec}
    return build_dataset(load_entries(None, inline), tokenizer, "internvl2_5", SETTINGS, max_seq_length, **kw)


# --- length policy ----------------------------------------------------------------------------------

def _image_spans(ids, tokenizer):
    """[(start, n_context)] of every <img>...</img> span; asserts each is complete and well-formed."""
    start, end, ctx = (tokenizer.convert_tokens_to_ids(t) for t in ("<img>", "</img>", "<IMG_CONTEXT>"))
    spans, i = [], 0
    while i < len(ids):
        if ids[i] == start:
            j = i + 1
            while j < len(ids) and ids[j] == ctx:
                j += 1
            assert j < len(ids) and ids[j] == end, "an image span is cut"
            spans.append((i, j - i - 1))
            i = j
        else:
            assert ids[i] not in (end, ctx), "image tokens outside a complete span"
        i += 1
    return spans


def test_drop_policy_skips_and_counts_without_failing_strict(tmp_path, tokenizer, caplog):
    rows = [{"conversations": conv("Hi", "Hello.")}, {"conversations": conv("word " * 300, "Too long.")}]
    with caplog.at_level(logging.WARNING):
        ds, report = build(tmp_path, tokenizer, {"d": (rows, {})}, max_seq_length=128, on_error="strict")
    assert len(ds) == 1 and report.skipped == {"too_long": 1}
    assert str(report.problems[0]).startswith(f"{tmp_path / 'd.jsonl'}:2: too_long:")
    assert "too_long" in caplog.text
    assert report.as_dict()["skipped_by_reason"] == {"too_long": 1}


def test_truncate_cuts_whole_trailing_turns(tmp_path, tokenizer):
    write_image(tmp_path / "a.png", (64, 64))
    turns = ["<image>\nFirst?", "One."] + ["More words here " * 6, "Two."] * 3
    rows = [{"image": "a.png", "conversations": conv(*turns)}]
    full, _ = build(tmp_path, tokenizer, {"d": (rows, {})})
    assert full.samples[0].length > 160
    ds, report = build(tmp_path, tokenizer, {"d": (rows, {})}, max_seq_length=160, length_policy="truncate")
    sample = ds.samples[0]
    assert report.truncated == 1 and sample.truncated and sample.length <= 160
    kept = len(sample.conversations)
    assert kept % 2 == 0 and 2 <= kept < len(turns)
    item = ds[0]
    assert len(item["input_ids"]) == sample.length
    assert tokenizer.decode(item["input_ids"].tolist()) == TEMPLATES["internvl2_5"].render(conv(*turns[:kept])).replace(
        "<image>", "<img>" + "<IMG_CONTEXT>" * (5 * TOKENS) + "</img>"
    )


def test_truncate_never_leaves_a_partial_image_span_property(tmp_path, tokenizer):
    """Property-style over many random samples: whatever max_seq_length, every kept sample has complete
    image spans whose context-token counts equal its tiles, and the tiles loaded equal the tiles planned."""
    rng = random.Random(0)
    sizes = [(32, 32), (64, 32), (32, 96), (100, 100), (20, 200)]
    for k, size in enumerate(sizes):
        write_image(tmp_path / f"i{k}.png", size)
    rows = []
    for _ in range(60):
        turns, images = [], []
        for _ in range(rng.randint(1, 4)):
            n_img = rng.choice([0, 0, 1, 2])
            images += [f"i{rng.randrange(len(sizes))}.png" for _ in range(n_img)]
            turns += ["<image>\n" * n_img + "Question " * rng.randint(1, 12), "Answer " * rng.randint(1, 8)]
        rows.append({"image": images, "conversations": conv(*turns)} if images else {"conversations": conv(*turns)})
    ctx = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    kept_any = truncated_any = 0
    for max_len in (60, 90, 130, 200, 400):
        ds, report = build(tmp_path, tokenizer, {"p": (rows, {})}, max_seq_length=max_len, length_policy="truncate", on_error="skip")
        assert report.samples + report.skipped["too_long"] == len(rows)
        assert set(report.skipped) <= {"too_long"}
        for i, sample in enumerate(ds.samples):
            item = ds[i]
            ids = item["input_ids"].tolist()
            assert len(ids) == sample.length <= max_len
            spans = _image_spans(ids, tokenizer)
            assert [n for _, n in spans] == [t * TOKENS for t in sample.num_tiles]
            tiles = item["pixel_tiles"].shape[0] if "pixel_tiles" in item else 0
            assert tiles == sum(sample.num_tiles) and ids.count(ctx) == tiles * TOKENS
            assert item["labels"][-2].item() != IGNORE_INDEX  # ends with a supervised <|im_end|> then a masked "\n"
            kept_any += 1
            truncated_any += sample.truncated
    assert kept_any > 100 and truncated_any > 20


def test_truncate_still_drops_when_the_first_turn_alone_is_too_long(tmp_path, tokenizer):
    write_image(tmp_path / "a.png", (64, 64))
    rows = [{"image": "a.png", "conversations": conv("<image>\nQ?", "A.", "More?", "B.")}]
    ds_rows = rows + [{"conversations": conv("Hi", "Hello.")}]
    ds, report = build(tmp_path, tokenizer, {"d": (ds_rows, {})}, max_seq_length=40, length_policy="truncate")
    assert report.skipped == {"too_long": 1} and "even with only the first turn pair" in report.problems[0].detail
    assert len(ds) == 1


# --- repeat_time and weights --------------------------------------------------------------------------

def test_repeat_time_below_one_is_a_seeded_random_subset_not_a_prefix():
    items = list(range(100))
    a = apply_repeat_time(items, 0.3, random.Random("s"))
    assert len(a) == 30 and a != items[:30] and a == sorted(a) and len(set(a)) == 30
    assert a == apply_repeat_time(items, 0.3, random.Random("s"))
    assert a != apply_repeat_time(items, 0.3, random.Random("t"))


def test_fractional_repeat_time_above_one():
    items = list(range(40))
    out = apply_repeat_time(items, 2.5, random.Random(0))
    counts = Counter(out)
    assert len(out) == 100 and set(counts.values()) == {2, 3} and sum(1 for c in counts.values() if c == 3) == 20
    assert apply_repeat_time(items, 3, random.Random(0)) == items * 3


def test_repeat_time_through_the_dataset(tmp_path, tokenizer):
    rows = [{"conversations": conv(f"Q{i}", f"A{i}.")} for i in range(20)]
    ds, report = build(tmp_path, tokenizer, {"a": (rows, {"repeat_time": 0.25}), "b": (rows, {"repeat_time": 1.5})}, seed=3)
    assert report.per_dataset == {"a": 5, "b": 30}
    lines_a = [s.line.line_no for s in ds.samples if s.entry.name == "a"]
    assert lines_a != [1, 2, 3, 4, 5]
    ds2, _ = build(tmp_path, tokenizer, {"a": (rows, {"repeat_time": 0.25}), "b": (rows, {"repeat_time": 1.5})}, seed=3)
    assert [s.line.line_no for s in ds2.samples] == [s.line.line_no for s in ds.samples]


def test_quotas_are_proportional_and_exact():
    assert quotas({"a": 10, "b": 30}, {"a": 3, "b": 1}, 40) == {"a": 30, "b": 10}
    q = quotas({"a": 5, "b": 5, "c": 5}, {"a": 1, "b": 1, "c": 1}, 100)
    assert sum(q.values()) == 100 and sorted(q.values()) == [33, 33, 34]
    assert quotas({"a": 5, "b": 5}, {"a": 1, "b": 0}, 10) == {"a": 10, "b": 0}
    rng = random.Random(1)
    for _ in range(200):
        names = [f"d{i}" for i in range(rng.randint(1, 6))]
        sizes = {n: rng.randint(1, 50) for n in names}
        weights = {n: rng.choice([0.0, 0.5, 1.0, 2.0, 7.3]) for n in names}
        weights[names[0]] = 1.0
        total = rng.randint(1, 500)
        q = quotas(sizes, weights, total)
        assert sum(q.values()) == total
        norm = sum(weights.values())
        assert all(abs(q[n] - total * weights[n] / norm) < 1 for n in names)


def test_mix_fills_slots_with_whole_passes_then_a_random_rest():
    groups = {"small": list("abcde"), "big": list(range(35))}
    out, slots = mix(groups, {"small": 3.0, "big": 1.0}, seed=0)
    assert slots == {"small": 30, "big": 10} and len(out) == 40
    small = Counter(x for x in out if isinstance(x, str))
    assert small == {c: 6 for c in "abcde"}
    big = [x for x in out if isinstance(x, int)]
    assert len(set(big)) == 10  # 10 different samples of the 35, no repeats
    assert big != list(range(10))
    with pytest.raises(MixtureError, match=r"\['big'\] have no weight"):
        mix(groups, {"small": 1.0}, seed=0)


def test_weights_through_the_dataset_and_config(tmp_path, tokenizer):
    rows = [{"conversations": conv(f"Q{i}", f"A{i}.")} for i in range(10)]
    ds, report = build(tmp_path, tokenizer, {"a": (rows, {"weight": 1.0}), "b": (rows[:5], {"weight": 4.0})})
    assert report.per_dataset == {"a": 10, "b": 5}
    assert report.mixture == {"a": 3, "b": 12} and len(ds) == 15 and report.as_dict()["mixture"] == {"a": 3, "b": 12}
    with pytest.raises(DataConfigError, match="weight must be >= 0"):
        build(tmp_path, tokenizer, {"a": (rows, {"weight": -1})})
    with pytest.raises(MixtureError, match="set `weight` on every dataset or on none"):
        build(tmp_path, tokenizer, {"a": (rows, {"weight": 1.0}), "b": (rows, {})})


def test_weight_is_a_dataset_spec_field():
    from conftest import compose

    cfg = compose(["data=mix", "data.datasets.shapes.weight=2.5"])
    assert cfg.data.datasets.shapes.weight == 2.5 and cfg.data.datasets.text.weight is None
    assert cfg.data.min_num_frame == 8 and cfg.data.max_num_frame == 32 and cfg.data.frame_sampling == "rand"


# --- bad data -----------------------------------------------------------------------------------------

def _bad_lines(tmp_path):
    """One line per bad-data case (with the reason it must get), between good lines."""
    write_image(tmp_path / "ok.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not an image")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    write_video(tmp_path / "v.mp4", frames=10, fps=10)
    (tmp_path / "empty_frames").mkdir()
    good = {"image": "ok.png", "conversations": conv("<image>\nQ?", "A.")}
    cases = [
        ('{"conversations": [', "invalid_json"),
        ("[1, 2, 3]", "invalid_json"),
        ({"image": "ok.png"}, "bad_conversation"),
        ({"conversations": [{"from": "human", "value": "Q?"}, {"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}, "bad_conversation"),
        ({"conversations": [{"from": "gpt", "value": "A."}, {"from": "human", "value": "Q?"}]}, "bad_conversation"),
        ({"image": 42, "conversations": conv("Q?", "A.")}, "bad_media_field"),
        ({"image": "ok.png", "video": "v.mp4", "conversations": conv("Q?", "A.")}, "bad_media_field"),
        ({"video": "v.mp4", "clip": [3, 1], "conversations": conv("Q?", "A.")}, "bad_media_field"),
        ({"image": "ok.png", "conversations": conv("<image><image>\nQ?", "A.")}, "image_count_mismatch"),
        ({"video": "v.mp4", "conversations": conv("<video><image>\nQ?", "A.")}, "image_count_mismatch"),
        ({"conversations": conv("<video>\nQ?", "A.")}, "image_count_mismatch"),
        ({"image": "nope.png", "conversations": conv("<image>\nQ?", "A.")}, "missing_media"),
        ({"video": "nope.mp4", "conversations": conv("Q?", "A.")}, "missing_media"),
        ({"image": "garbage.png", "conversations": conv("<image>\nQ?", "A.")}, "corrupt_media"),
        ({"video": "garbage.mp4", "conversations": conv("Q?", "A.")}, "video_unreadable"),
        ({"video": "v.mp4", "clip": [5.0, 9.0], "conversations": conv("Q?", "A.")}, "video_unreadable"),
        ({"video": "empty_frames/", "conversations": conv("Q?", "A.")}, "video_unreadable"),
        ({"conversations": conv("word " * 3000, "A.")}, "too_long"),
    ]
    rows, expected = [good], {}
    for row, reason in cases:
        rows.append(row)
        expected[len(rows)] = reason  # 1-based line number
        rows.append(good)
    return rows, expected


def test_bad_data_reasons_cover_every_documented_reason(tmp_path):
    _, expected = _bad_lines(tmp_path)
    assert set(expected.values()) == set(REASONS)


def test_strict_lists_every_problem_with_file_and_line(tmp_path, tokenizer):
    rows, expected = _bad_lines(tmp_path)
    with pytest.raises(DataError) as err:
        build(tmp_path, tokenizer, {"bad": (rows, {})}, max_seq_length=2048, on_error="strict")
    msg = str(err.value)
    ann = tmp_path / "bad.jsonl"
    fatal = {ln: r for ln, r in expected.items() if r != "too_long"}
    assert f"{len(fatal)} problem(s)" in msg and "data.on_error=skip" in msg
    for line_no, reason in fatal.items():
        assert f"{ann}:{line_no}: {reason}:" in msg
    assert "too_long" not in msg  # a length-policy drop is not bad data
    # Every listed problem names a line we planted, nothing else.
    listed = [l.strip() for l in msg.splitlines()[1:]]
    assert len(listed) == len(fatal)


def test_skip_counts_by_reason_and_keeps_only_good_lines(tmp_path, tokenizer, caplog):
    rows, expected = _bad_lines(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds, report = build(tmp_path, tokenizer, {"bad": (rows, {})}, max_seq_length=2048, on_error="skip")
    assert report.skipped == Counter(expected.values())
    assert report.as_dict()["skipped_by_reason"] == dict(Counter(expected.values()))
    assert len(ds) == len(rows) - len(expected)
    assert all(s.images and s.images[0].name == "ok.png" for s in ds.samples)
    assert [p.where for p in report.problems] == [f"{tmp_path / 'bad.jsonl'}:{n}" for n in expected]
    assert f"skipped {len(expected)} sample(s)" in caplog.text
    for reason in set(expected.values()):
        assert reason in caplog.text


def test_all_lines_bad_is_an_error_even_under_skip(tmp_path, tokenizer):
    with pytest.raises(DataError, match="no usable samples"):
        build(tmp_path, tokenizer, {"d": (["{oops"], {})}, on_error="skip")


def _truncated_png(path):
    """A PNG whose header is fine (the scan accepts it) but whose pixel data is cut off."""
    write_image(path, (64, 64))
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _load_time_failures(tmp_path):
    write_image(tmp_path / "ok.png")
    _truncated_png(tmp_path / "trunc.png")
    write_image(tmp_path / "gone.png")
    write_video(tmp_path / "v.mp4", frames=10)
    write_frame_folder(tmp_path / "frames", 4)
    good = {"image": "ok.png", "conversations": conv("<image>\nQ?", "A.")}
    return [
        good,
        {"image": "trunc.png", "conversations": conv("<image>\nQ?", "A.")},
        good,
        {"image": "gone.png", "conversations": conv("<image>\nQ?", "A.")},
        good,
        {"video": "v.mp4", "conversations": conv("Q?", "A.")},
        good,
        {"video": "frames/", "conversations": conv("Q?", "A.")},
    ]


# dataset index -> the reason its load fails once _break_after_scan ran
LOAD_FAILS = {1: "corrupt_media", 3: "missing_media", 5: "video_unreadable", 7: "video_unreadable"}


def _break_after_scan(tmp_path):
    (tmp_path / "gone.png").unlink()
    (tmp_path / "v.mp4").write_bytes(b"not a video any more")
    for f in (tmp_path / "frames").iterdir():
        f.write_bytes(b"broken")


def test_load_time_failures_strict_raise_with_file_and_line(tmp_path, tokenizer):
    ds, _ = build(tmp_path, tokenizer, {"d": (_load_time_failures(tmp_path), {})}, on_error="strict")
    assert len(ds) == 8  # the scan reads headers only: every line looks fine
    _break_after_scan(tmp_path)
    assert pixels(ds[0]).shape[0] >= 1
    ann = tmp_path / "d.jsonl"
    for index, reason in LOAD_FAILS.items():
        with pytest.raises(DataError, match=rf"{ann}:{index + 1}: {reason}: .*data.on_error=skip"):
            ds[index]


def test_load_time_failures_skip_serve_the_next_planned_sample_across_workers(tmp_path, tokenizer):
    """Skip means skip: a sample that fails to load is replaced by the next planned sample of the epoch order
    (counted by reason), so batches keep their size; counts made in data-loader workers reach this process."""
    ds, report = build(tmp_path, tokenizer, {"d": (_load_time_failures(tmp_path), {})}, on_error="skip")
    ref, _ = build(tmp_path, tokenizer, {"d": (_load_time_failures(tmp_path), {})}, on_error="skip")
    good = [ref[i] for i in range(8)]  # before the media break (only positions 1, 3, 5, 7 are used broken)
    _break_after_scan(tmp_path)
    assert report.as_dict()["load_failures"] == 0
    items = [ds[i] for i in range(8)]
    for i in range(8):
        served = (i + 1) % 8 if i in LOAD_FAILS else i  # the next planned sample (position 7 wraps to 0)
        assert items[i]["input_ids"].tolist() == good[served]["input_ids"].tolist()
        assert torch.equal(pixels(items[i]), pixels(good[served]))
    assert report.as_dict()["load_failures_by_reason"] == {"corrupt_media": 1, "missing_media": 1, "video_unreadable": 2}
    collator = Collator(tokenizer.pad_token_id)
    # Two worker processes, two batches each: the counts made there must reach this process.
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collator)
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 2, 2]
    assert report.load_failures.as_dict() == {"corrupt_media": 2, "missing_media": 2, "video_unreadable": 4}
    assert report.as_dict()["load_failures"] == 8


def test_load_time_tile_mismatch_follows_the_policy(tmp_path, tokenizer):
    """An image replaced by one of another shape after the scan: its planned tokens no longer fit its tiles."""
    write_image(tmp_path / "a.png", (64, 64))
    write_image(tmp_path / "ok.png", (32, 32))
    rows = [{"image": "a.png", "conversations": conv("<image>\nQ?", "A.")}, {"image": "ok.png", "conversations": conv("<image>\nQ?", "B.")}]
    strict, _ = build(tmp_path, tokenizer, {"d": (rows, {})}, on_error="strict")
    skip, report = build(tmp_path, tokenizer, {"d": (rows, {})}, on_error="skip")
    write_image(tmp_path / "a.png", (32, 32))  # 1 tile now, 2x2 + thumbnail planned
    with pytest.raises(DataError, match=r"d.jsonl:1: tile_mismatch: planned 5 tiles, loaded 1"):
        strict[0]
    assert skip[0]["input_ids"].tolist() == skip[1]["input_ids"].tolist()
    assert report.as_dict()["load_failures_by_reason"] == {"tile_mismatch": 1}


def test_data_report_is_json_for_metrics(tmp_path, tokenizer):
    rows, expected = _bad_lines(tmp_path)
    _, report = build(tmp_path, tokenizer, {"bad": (rows, {})}, max_seq_length=2048, on_error="skip")
    d = json.loads(json.dumps(report.as_dict()))
    assert d["samples"] == len(rows) - len(expected) and d["skipped_by_reason"]["too_long"] == 1
    assert d["tokens_per_epoch"] > 0 and 0 < d["supervised_tokens_per_epoch"] < d["tokens_per_epoch"]


@pytest.mark.slow
def test_policies_through_launch_py(tmp_path, demo_dir):
    """The real entry point: strict stops before training with file:line for every problem; skip trains and
    puts the counts by reason in train.log and metrics.json."""
    from conftest import run_launch

    good = json.loads((demo_dir / "shapes.jsonl").read_text().splitlines()[0])
    rows = [good] * 6 + ["{broken", {"image": "images/none.png", "conversations": conv("<image>\nQ?", "A.")}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"d": {"root": str(demo_dir), "annotation": str(tmp_path / "d.jsonl")}}))
    base = [f"paths.output_dir={tmp_path / 'out'}", f"paths.demo_data_dir={demo_dir}", f"data.meta_path={meta}",
            "data.generate_demo=false", "trainer.max_steps=2", "trainer.save_final=false"]
    strict = run_launch(base + ["run_name=strict"])
    assert strict.returncode != 0
    assert f"{tmp_path / 'd.jsonl'}:7: invalid_json" in strict.stderr and f"{tmp_path / 'd.jsonl'}:8: missing_media" in strict.stderr
    assert "Traceback" not in strict.stdout + strict.stderr  # a data mistake gets its message, not a stack
    failed = tmp_path / "out" / "default" / "strict" / "metrics.json"
    assert not failed.exists() or json.loads(failed.read_text())["status"] != "completed"
    skip = run_launch(base + ["run_name=skip", "data.on_error=skip"])
    assert skip.returncode == 0, skip.stderr[-3000:]
    run_dir = tmp_path / "out" / "default" / "skip"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["skipped_by_reason"] == {"invalid_json": 1, "missing_media": 1}
    assert metrics["data"]["samples"] == 6
    log = (run_dir / "train.log").read_text()
    assert "skipped 2 sample(s) by reason" in log and "d.jsonl:8: missing_media" in log


def _every_third_image_truncated(root: Path, n: int) -> Path:
    """A meta JSON over n single-image samples in root; every third image is truncated (its header scans, its
    decode fails)."""
    _truncated_png(root / "trunc.png")
    write_image(root / "ok.png", (64, 64))
    rows = [{"image": "trunc.png" if i % 3 == 2 else "ok.png", "conversations": conv("<image>\nColour?", "Red.")} for i in range(n)]
    write_jsonl(root / "d.jsonl", rows)
    meta = root / "meta.json"
    meta.write_text(json.dumps({"d": {"root": str(root), "annotation": str(root / "d.jsonl")}}))
    return meta


@pytest.mark.slow
def test_skip_keeps_every_step_when_images_fail_to_load_through_launch_py(tmp_path, demo_dir):
    """on_error=skip, batch size 1, every third image truncated (the header scan accepts it, the decode fails):
    the run completes all its steps, and metrics.json counts the failures by reason."""
    from conftest import run_launch

    meta = _every_third_image_truncated(tmp_path, 9)
    res = run_launch([f"paths.output_dir={tmp_path / 'out'}", f"paths.demo_data_dir={demo_dir}", f"paths.cache_dir={tmp_path / 'cache'}",
                      f"data.meta_path={meta}", "data.generate_demo=false", "data.on_error=skip", "run_name=skip",
                      "trainer.per_device_train_batch_size=1", "trainer.max_steps=9", "trainer.save_final=false"])
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "default" / "skip" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 9
    assert metrics["data"]["samples"] == 9 and metrics["data"]["skipped_by_reason"] == {}
    assert metrics["data"]["load_failures_by_reason"] == {"corrupt_media": 3} and metrics["data"]["load_failures"] == 3


def _epoch_lines(ds, epoch):
    import numpy as np

    ds.set_epoch(epoch)
    rows = ds.epoch_order()
    return list(zip(np.asarray(ds.plan.rows["dataset"])[rows].tolist(), np.asarray(ds.plan.rows["line_no"])[rows].tolist()))


def test_weights_with_repeat_time_never_repeat_a_sample_before_a_full_pass(tmp_path, tokenizer):
    rows = [{"conversations": conv(f"Q{i}", f"A{i}.")} for i in range(30)]
    # a: 10 lines x repeat_time 3 = a pool of 30 of the 90; weights 1:1:2 give it 23 slots (the tie of 22.5 goes
    # to the first dataset): two whole passes over its 10 lines, then 3 of them once more, never 3 copies of one
    # line while another has 1 (what drawing 23 from the 30 copies would allow).
    ds, report = build(tmp_path, tokenizer, {"a": (rows[:10], {"repeat_time": 3, "weight": 1.0}), "b": (rows, {"weight": 1.0}),
                                             "c": (rows, {"weight": 2.0})})
    assert report.per_dataset == {"a": 30, "b": 30, "c": 30} and report.mixture == {"a": 23, "b": 22, "c": 45}
    for epoch in range(3):
        counts = Counter(line for d, line in _epoch_lines(ds, epoch) if d == 0)
        assert len(counts) == 10 and set(counts.values()) == {2, 3}  # 2 whole passes, then 2 of the 10 once more
        counts_b = Counter(line for d, line in _epoch_lines(ds, epoch) if d == 1)
        assert len(counts_b) == 22 and set(counts_b.values()) == {1}  # fewer slots than lines: no repeats


def test_subsets_change_per_epoch_reproducibly(tmp_path, tokenizer):
    rows = [{"conversations": conv(f"Q{i}", f"A{i}.")} for i in range(40)]
    spec = {"half": (rows, {"repeat_time": 0.5}), "weighted": (rows, {"repeat_time": 1})}
    ds, _ = build(tmp_path, tokenizer, spec, seed=3)
    epochs = [_epoch_lines(ds, e) for e in range(4)]
    assert all(len(e) == 60 for e in epochs)
    halves = [frozenset(line for d, line in e if d == 0) for e in epochs]
    assert all(len(h) == 20 for h in halves) and len(set(halves)) == 4  # a different half every epoch
    again, _ = build(tmp_path, tokenizer, spec, seed=3)
    assert [_epoch_lines(again, e) for e in (2, 0)] == [epochs[2], epochs[0]]  # reproducible, in any order
    assert _epoch_lines(ds, 1) == epochs[1]
    ds_w, _ = build(tmp_path, tokenizer, {"a": (rows, {"weight": 1.0}), "b": (rows[:10], {"weight": 1.0})}, seed=3)
    picks = [frozenset(line for d, line in _epoch_lines(ds_w, e) if d == 0) for e in range(3)]
    assert all(len(p) == 25 for p in picks) and len(set(picks)) == 3


@pytest.mark.slow
def test_two_process_run_scans_once_and_skips_on_every_rank(tmp_path, demo_dir):
    """torchrun with 2 CPU processes (gloo): one rank scans, the other loads the cached plan; with every third
    image truncated and batch size 1 both ranks run all their steps; metrics.json sums the failures of both."""
    import subprocess
    import sys

    from conftest import ROOT

    meta = _every_third_image_truncated(tmp_path, 12)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "launch.py"),
           f"paths.output_dir={tmp_path / 'out'}", f"paths.demo_data_dir={demo_dir}", f"paths.cache_dir={tmp_path / 'cache'}",
           f"data.meta_path={meta}", "data.generate_demo=false", "data.on_error=skip", "run_name=two",
           "trainer.per_device_train_batch_size=1", "trainer.max_steps=6", "trainer.save_final=false"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    # One plan (own data: no eval, data=demo's eval split goes with the demo's data only), scanned by one rank
    # and loaded by the other.
    assert out.count("data plan: scanned") == 1 and out.count("data plan: cache hit") == 1
    metrics = json.loads((tmp_path / "out" / "default" / "two" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 6 and metrics["samples"] == 12
    served = out.count("skipping sample (corrupt_media)")  # both ranks log their own
    assert served >= 1 and metrics["data"]["load_failures_by_reason"] == {"corrupt_media": served}
