"""data_check on preference pairs: the golden MPO data (InternVL's labels as the oracle for the supervised counts
--show prints) and a fixture of bad pairs, each reported as file:line: reason."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import fixture
from golden_mpo import GOLDEN, REFERENCE
from internvl_exp.tools.data_check import main

BAD = fixture("bad_pairs", "meta.json")
# jsonl line -> the reason data/preference.py REASONS gives it (line 1 is the one good pair)
BAD_LINES = {2: "bad_pair", 3: "bad_pair", 4: "too_long", 5: "missing_media", 6: "invalid_json",
             7: "image_count_mismatch", 8: "bad_pair"}


def golden_args(tmp_path) -> list[str]:
    meta = json.loads((GOLDEN / "data" / "meta.json").read_text())
    for spec in meta.values():
        spec["root"], spec["annotation"] = str(GOLDEN / spec["root"]), str(GOLDEN / spec["annotation"])
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return ["model=local", f"model.path={REFERENCE}", "model.template=internvl2_5", "model.image_size=56",
            "data.max_seq_length=512", f"data.meta_path={tmp_path / 'meta.json'}", "data.generate_demo=false",
            f"paths.cache_dir={tmp_path / 'cache'}"]


def test_golden_pairs_pass_and_show_renders_prompt_chosen_and_rejected(tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    assert main(golden_args(tmp_path) + ["--show", "2", "--show-from", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["kind"] == "preference" and report["problems"] == [] and report["exit_status"] == 0
    (row,) = report["datasets"]
    assert (row["pairs"], row["text_only"], row["images"], row["tiles_max"]) == (7, 1, 7, 6)
    # The supervised counts --show prints are those of InternVL's own labels for jsonl lines 3 and 4 (0-based).
    for k in (3, 4):
        sample = torch.load(GOLDEN / "samples" / f"line{k}.pt", weights_only=False)
        for side in ("chosen", "rejected"):
            n = int((sample[f"{side}_labels"][1:] != -100).sum())  # what the loss counts (shifted labels)
            assert re.search(rf"{side} \(\d+ tokens, {n} supervised\)", text), (k, side, n)
    assert text.count("prompt: ") == 2 and "[[He is holding a camera mounted on a" in text
    assert "[[He is holding an umbrella" in text  # the rejected answer, supervised from its first token


def test_bad_pairs_are_named_by_file_line_and_reason(tmp_path, capsys) -> None:
    out = tmp_path / "bad.json"
    args = [f"data.meta_path={BAD}", "data.generate_demo=false", "data.max_seq_length=300", "--json", str(out)]
    assert main(args) == 1  # strict: training would stop
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    found = {int(p["where"].rsplit(":", 1)[1]): p["reason"] for p in report["problems"]}
    assert found == BAD_LINES
    for line, reason in BAD_LINES.items():
        assert f"pairs.jsonl:{line}: {reason}: " in text
    assert "'chosen' missing" in text and "'rejected' is empty" in text and "looks like SFT data" in text
    assert report["datasets"][0]["pairs"] == 1

    assert main(args[:-2] + ["data.on_error=skip"]) == 0  # the same problems are skips: training would start
    assert "pairs.jsonl:4: too_long: chosen " in capsys.readouterr().out


def test_too_long_alone_is_a_skip_not_a_stop(tmp_path, capsys) -> None:
    lines = fixture("bad_pairs", "pairs.jsonl").read_text().splitlines()
    (tmp_path / "p.jsonl").write_text(lines[0] + "\n" + lines[3] + "\n")
    (tmp_path / "red.png").write_bytes(fixture("bad_pairs", "red.png").read_bytes())
    (tmp_path / "meta.json").write_text(json.dumps({"p": {"root": ".", "annotation": "p.jsonl", "repeat_time": 1}}))
    assert main([f"data.meta_path={tmp_path / 'meta.json'}", "data.generate_demo=false", "data.max_seq_length=300"]) == 0
    assert "p.jsonl:2: too_long" in capsys.readouterr().out


def test_sft_lines_checked_as_pairs_on_request(tmp_path, capsys, demo_dir) -> None:
    args = [f"paths.demo_data_dir={demo_dir}", "--pairs", "--max-problems", "1"]
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "bad_pair" in text and "looks like SFT data" in text and "no usable pairs" in text


def test_a_preference_objective_reads_the_pair_demo_as_training_does(tmp_path, capsys) -> None:
    # data=demo_pref: the pair demo is generated (not the SFT demo) and checked as pairs, as training reads it
    out = tmp_path / "report.json"
    assert main(["objective=mpo", "data=demo_pref", f"paths.demo_data_dir={tmp_path / 'demo'}",
                 f"paths.cache_dir={tmp_path / 'cache'}", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "preference" and sum(r["pairs"] for r in report["datasets"]) > 0
    assert (tmp_path / "demo_pref" / "meta.json").exists() and not (tmp_path / "demo" / "meta.json").exists()


@pytest.mark.parametrize("first, kind", [('{"question": "q", "chosen": "a", "rejected": "b"}', "preference"),
                                         ('{"conversations": []}', "sft"), ("not json", None)])
def test_the_kind_of_data_is_read_from_its_lines(tmp_path, first: str, kind) -> None:
    from internvl_exp.data.preference_data import first_line_kind
    from internvl_exp.data.sources import DatasetEntry

    (tmp_path / "a.jsonl").write_text(first + "\n")
    assert first_line_kind(DatasetEntry("a", tmp_path / "a.jsonl", tmp_path)) == kind


def test_decode_finds_an_image_that_only_fails_a_full_decode(tmp_path, capsys) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:60])  # the header (its size) reads, the pixels do not
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "cut.png", "question": "Colour?", "chosen": "Red.",
                                                  "rejected": "Blue."}) + "\n")
    (tmp_path / "meta.json").write_text(json.dumps({"p": {"root": ".", "annotation": "p.jsonl", "repeat_time": 1}}))
    args = [f"data.meta_path={tmp_path / 'meta.json'}", "data.generate_demo=false"]
    assert main(args) == 0  # the scan reads headers only
    capsys.readouterr()
    assert main(args + ["--decode"]) == 1
    text = capsys.readouterr().out
    assert "decode: 0 of 1 pairs load" in text and "p.jsonl:1: corrupt_media: " in text
    assert main(args + ["--decode", "data.on_error=skip"]) == 0
