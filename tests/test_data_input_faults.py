"""Inputs that used to crash or go unexplained: a lone UTF-16 surrogate in a JSON line, and a file that only a full
decode finds broken (data_check --decode must say why, as training does)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_media import conv, write_jsonl
from internvl_exp.tools.data_check import main

# Valid JSON (json.loads accepts it) whose string is not valid Unicode: no tokenizer can take it.
SURROGATE_LINE = '{"conversations": [{"from": "human", "value": "hi \\ud800"}, {"from": "gpt", "value": "ok"}]}'
PAIRED_LINE = '{"conversations": [{"from": "human", "value": "smile \\ud83d\\ude00"}, {"from": "gpt", "value": "ok"}]}'


def _surrogate_meta(tmp_path):
    ann = tmp_path / "s.jsonl"
    ann.write_text("\n".join([json.dumps({"conversations": conv("Hi", "Hello.")}), SURROGATE_LINE, PAIRED_LINE]) + "\n")
    assert json.loads(SURROGATE_LINE)["conversations"][0]["value"] == "hi \ud800"  # the oracle: it is valid JSON
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"s": {"root": ".", "annotation": "s.jsonl"}}))
    return meta, ann


@pytest.mark.parametrize("policy,status", [("strict", 1), ("skip", 0)])
def test_a_lone_surrogate_is_a_file_line_problem_in_data_check(tmp_path, capsys, demo_dir, policy, status):
    meta, ann = _surrogate_meta(tmp_path)
    out = tmp_path / "r.json"
    args = [f"data.meta_path={meta}", "data.generate_demo=false", f"paths.demo_data_dir={demo_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"data.on_error={policy}", "--json", str(out)]
    assert main(args) == status
    text = capsys.readouterr().out
    assert "Traceback" not in text and "TypeError" not in text
    assert f"{ann}:2: invalid_json: conversations[0].value holds a lone UTF-16 surrogate" in text
    report = json.loads(out.read_text())
    assert [p["where"] for p in report["problems"]] == [f"{ann}:2"]  # the paired escape (an emoji) is fine
    assert report["datasets"][0]["samples"] == 2


def test_a_lone_surrogate_under_the_training_scan(tmp_path, tokenizer):
    from internvl_exp.data.dataset import DataError, ImageSettings, build_dataset
    from internvl_exp.data.sources import load_entries

    _, ann = _surrogate_meta(tmp_path)
    entries = load_entries(None, {"s": {"annotation": str(ann), "root": str(tmp_path)}})
    s = ImageSettings(tile_size=64, tokens_per_tile=4)
    with pytest.raises(DataError, match=f"{ann}:2: invalid_json: .*lone UTF-16 surrogate"):
        build_dataset(entries, tokenizer, "internvl2_5", s, 512, scan_workers=2)
    dataset, report = build_dataset(entries, tokenizer, "internvl2_5", s, 512, on_error="skip", scan_workers=2)
    assert len(dataset) == 2 and dict(report.skipped) == {"invalid_json": 1}
    assert "\U0001F600" in tokenizer.decode(dataset[1]["input_ids"])  # the paired one is kept, as the emoji


def test_decode_failures_say_why(tmp_path, capsys, demo_dir):
    path = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])  # header intact, pixels cut off
    with pytest.raises(OSError) as decoded:  # the oracle: what PIL itself says about this file
        Image.open(path).load()
    write_jsonl(tmp_path / "d.jsonl", [{"image": "trunc.png", "conversations": conv("Q?", "A.")},
                                       {"conversations": conv("Hi", "Hello.")}])
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"d": {"root": ".", "annotation": "d.jsonl"}}))
    out = tmp_path / "r.json"
    args = [f"data.meta_path={meta}", "data.generate_demo=false", f"paths.demo_data_dir={demo_dir}", "--decode",
            "--json", str(out)]
    assert main(args) == 1
    text = capsys.readouterr().out
    line = f"{tmp_path / 'd.jsonl'}:1: corrupt_media: {decoded.value}"
    assert "truncated" in str(decoded.value) and line in text
    assert json.loads(out.read_text())["load_failures"] == [line]
