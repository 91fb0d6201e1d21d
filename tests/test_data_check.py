"""The data check tool: same composition and scan as training, per-dataset report, --show, --decode,
--json, and exit status (0 ok, 1 bad data under strict, 2 config error)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import ROOT
from data_media import conv, write_image, write_jsonl
from internvl_exp.tools.data_check import main
from internvl_exp.tools.stats import percentile


def _bad_meta(tmp_path):
    write_image(tmp_path / "ok.png", (128, 128))
    rows = [
        {"image": "ok.png", "conversations": conv("<image>\nWhat?", "A square.")},
        "{not json",
        {"image": "missing.png", "conversations": conv("<image>\nWhat?", "A square.")},
        {"conversations": conv("Hi", "Hello.")},
    ]
    write_jsonl(tmp_path / "bad.jsonl", rows)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"bad": {"root": ".", "annotation": "bad.jsonl", "repeat_time": 1}}))
    return meta


def test_percentile_nearest_rank():
    assert percentile([], 50) == 0
    assert percentile([5], 95) == 5
    assert percentile(list(range(1, 101)), 50) == 50 and percentile(list(range(1, 101)), 95) == 95
    assert percentile([3, 1, 2], 100) == 3
    assert percentile(np.array([3, 1, 2]), 50) == 2  # the pairs report passes arrays


def test_report_matches_the_training_scan(tmp_path, demo_dir, tokenizer):
    from conftest import compose
    from internvl_exp.data.from_config import build_from_config

    out = tmp_path / "r.json"
    status = main(["data=mix", f"paths.demo_data_dir={demo_dir}", "--json", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    rows = {r["dataset"]: r for r in report["datasets"]}
    _, train_report = build_from_config(compose(["data=mix"], demo_dir=demo_dir), tokenizer, 16)
    assert {k: rows[k]["in_epoch"] for k in train_report.per_dataset} == train_report.per_dataset
    assert rows["total"]["tokens_per_epoch"] == train_report.tokens == report["report"]["tokens_per_epoch"]
    assert rows["text"]["tiles_max"] == 0 and rows["compare"]["images"] == 2 * rows["compare"]["samples"]
    assert rows["shapes"]["length_p50"] <= rows["shapes"]["length_p95"] <= rows["shapes"]["length_max"]
    assert report["exit_status"] == 0 and report["problems"] == []


def test_strict_errors_exit_1_and_list_every_problem(tmp_path, capsys, demo_dir):
    meta = _bad_meta(tmp_path)
    args = [f"data.meta_path={meta}", "data.generate_demo=false", f"paths.demo_data_dir={demo_dir}"]
    assert main(args) == 1
    text = capsys.readouterr().out
    ann = tmp_path / "bad.jsonl"
    assert f"{ann}:2: invalid_json:" in text and f"{ann}:3: missing_media:" in text
    assert "training would stop" in text
    assert main(args + ["data.on_error=skip", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["report"]["skipped_by_reason"] == {"invalid_json": 1, "missing_media": 1}
    assert [p["where"] for p in report["problems"]] == [f"{ann}:2", f"{ann}:3"]
    assert "training would start" in capsys.readouterr().out


def test_show_renders_samples_with_supervised_tokens_marked(tmp_path, capsys, demo_dir):
    meta = _bad_meta(tmp_path)
    args = [f"data.meta_path={meta}", "data.generate_demo=false", "data.on_error=skip", f"paths.demo_data_dir={demo_dir}"]
    assert main(args + ["--show", "2"]) == 0
    text = capsys.readouterr().out
    assert "[[A square.<|im_end|>]]" in text and "[[Hello.<|im_end|>]]" in text  # piped output: brackets, not colour
    assert "<IMG_CONTEXT>×80" in text  # 2x2 + thumbnail = 5 tiles of 16 tokens, collapsed
    assert "[[What?" not in text and "<|im_start|>user" in text


def test_decode_finds_files_that_fail_only_on_a_full_decode(tmp_path, capsys, demo_dir):
    path = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])  # header intact, pixels cut off
    write_jsonl(tmp_path / "d.jsonl", [{"image": "trunc.png", "conversations": conv("Q?", "A.")}, {"conversations": conv("Hi", "Hello.")}])
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"d": {"root": ".", "annotation": "d.jsonl"}}))
    args = [f"data.meta_path={meta}", "data.generate_demo=false", f"paths.demo_data_dir={demo_dir}"]
    assert main(args) == 0  # the header scan cannot see it
    capsys.readouterr()
    assert main(args + ["--decode"]) == 1
    text = capsys.readouterr().out
    assert "decode: 1 of 2 samples load" in text and "corrupt_media" in text
    assert f"{tmp_path / 'd.jsonl'}:1" in text
    assert main(args + ["--decode", "data.on_error=skip"]) == 0


def test_config_errors_exit_2(capsys, demo_dir):
    assert main(["data.max_seq_lenght=5"]) == 2
    assert main([f"paths.demo_data_dir={demo_dir}", "data.on_error=ignore"]) == 2
    assert "data.on_error" in capsys.readouterr().out


def test_help_is_useful():
    res = subprocess.run([sys.executable, "-m", "internvl_exp.tools.data_check", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for word in ("overrides", "--show", "--decode", "--json", "exit status", "data=mix", "p50/p95/max"):
        assert word in res.stdout, word
