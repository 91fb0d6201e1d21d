"""The pre-flight plan at scale: parallel scan (same result as one process), compact arrays, and the plan cache
(a hit on the second build, invalidated by a changed annotation file, the tokenizer or the settings; two
processes started at once scan once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT
from data_media import conv, write_image, write_jsonl
from internvl_exp.data.dataset import DataError, ImageSettings, build_dataset
from internvl_exp.data.plan import ROW_FIELDS
from internvl_exp.data.sources import load_entries
from test_data_policies import _bad_lines

SETTINGS = ImageSettings(tile_size=32, tokens_per_tile=4, max_dynamic_patch=4, min_num_frame=2, max_num_frame=4)


def _build(tmp_path, tokenizer, rows=None, name="d", **kw):
    ann = tmp_path / f"{name}.jsonl"
    if rows is not None:
        write_jsonl(ann, rows)
    entries = load_entries(None, {name: {"annotation": str(ann), "root": str(tmp_path)}})
    kw.setdefault("max_seq_length", 2048)
    return build_dataset(entries, tokenizer, "internvl2_5", SETTINGS, **kw)


def _mixed_rows(tmp_path, n=300):
    write_image(tmp_path / "wide.png", (120, 40))
    write_image(tmp_path / "tall.png", (30, 90))
    rows = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            rows.append({"image": "wide.png", "conversations": conv("<image>\nWhat?", f"Answer {i}.")})
        elif kind == 1:
            rows.append({"image": ["wide.png", "tall.png"], "conversations": conv("Compare.", f"Answer {i}.", "More?", "No.")})
        else:
            rows.append({"conversations": conv(f"Question {i}?" * (i % 7 + 1), "Sure.")})
    return rows


def _arrays(ds):
    return {k: np.asarray(v) for k, v in ds.plan.rows.items()} | {"tiles": np.asarray(ds.plan.tiles)}


def test_parallel_scan_gives_the_same_plan_and_problems_as_one_process(tmp_path, tokenizer, monkeypatch):
    import internvl_exp.data.prescan as prescan

    monkeypatch.setattr(prescan, "MIN_CHUNK", 512)  # many chunks, so several workers really share the file
    rows, expected = _bad_lines(tmp_path)
    rows = _mixed_rows(tmp_path) + rows
    one, r1 = _build(tmp_path, tokenizer, rows, on_error="skip", scan_workers=1)
    two, r2 = _build(tmp_path, tokenizer, None, on_error="skip", scan_workers=2)
    a, b = _arrays(one), _arrays(two)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert [str(p) for p in r1.problems] == [str(p) for p in r2.problems]
    assert len(r1.problems) == len(expected) and r1.skipped == r2.skipped
    # The rows point at their lines: reading by offset gives the planned line back.
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    for i in (0, 1, 2, 150, len(two) - 1):
        s = two.samples[i]
        assert s.line.text == lines[s.line.line_no - 1]


def test_strict_lists_the_same_problems_with_workers_and_from_the_cache(tmp_path, tokenizer):
    rows, expected = _bad_lines(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", rows)
    messages = []
    for kw in ({"scan_workers": 1}, {"scan_workers": 2, "cache_dir": tmp_path / "cache"}, {"cache_dir": tmp_path / "cache"}):
        with pytest.raises(DataError) as err:
            _build(tmp_path, tokenizer, None, on_error="strict", **kw)
        messages.append(str(err.value))
    assert messages[0] == messages[1] == messages[2]
    fatal = [n for n, r in expected.items() if r != "too_long"]
    assert [line.split(": ")[0] for line in messages[0].splitlines()[1:]] == [f"  {tmp_path / 'd.jsonl'}:{n}" for n in fatal]


def test_second_build_is_a_cache_hit_with_the_same_plan(tmp_path, tokenizer, caplog):
    import logging

    cache = tmp_path / "cache"
    first, r1 = _build(tmp_path, tokenizer, _mixed_rows(tmp_path), cache_dir=cache)
    with caplog.at_level(logging.INFO, logger="internvl_exp.data.prescan"):
        second, r2 = _build(tmp_path, tokenizer, None, cache_dir=cache)
    assert (r1.plan_source, r2.plan_source) == ("cache-miss", "cache-hit")
    assert "data plan: cache hit" in caplog.text and r2.as_dict()["plan"] == "cache-hit"
    a, b = _arrays(first), _arrays(second)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert all(isinstance(v, np.memmap) for v in second.plan.rows.values())  # shared pages, not copies
    assert r1.as_dict() | {"plan": None} == r2.as_dict() | {"plan": None}
    assert second[5]["input_ids"].tolist() == first[5]["input_ids"].tolist()


def test_a_changed_annotation_file_invalidates_the_cache(tmp_path, tokenizer):
    cache = tmp_path / "cache"
    rows = _mixed_rows(tmp_path, 30)
    ds, report = _build(tmp_path, tokenizer, rows, cache_dir=cache)
    ann = tmp_path / "d.jsonl"
    # Same size, same mtime: only the content differs (a digit of an answer).
    text = ann.read_text()
    st = os.stat(ann)
    ann.write_text(text.replace("Answer 27.", "Answer 28."))
    os.utime(ann, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed, r2 = _build(tmp_path, tokenizer, None, cache_dir=cache)
    assert r2.plan_source == "cache-miss"
    assert "Answer 28." in changed.samples[27].line.text
    # Touched, not changed: the content fingerprint still matches, so the plan is reused.
    os.utime(ann)
    assert _build(tmp_path, tokenizer, None, cache_dir=cache)[1].plan_source == "cache-hit"
    # A line more: a new scan that sees it.
    write_jsonl(ann, rows + [{"conversations": conv("New?", "Yes.")}])
    grown, r3 = _build(tmp_path, tokenizer, None, cache_dir=cache)
    assert r3.plan_source == "cache-miss" and len(grown) == len(ds) + 1


def test_a_file_edited_during_the_scan_is_scanned_again_next_time(tmp_path, tokenizer, monkeypatch):
    """The cache records each file's stat from before the scan read it: a line appended while the scan ran (minutes
    at millions of lines) makes the next build scan again and see it, never load the plan of the older bytes."""
    import internvl_exp.data.prescan as prescan

    cache, ann = tmp_path / "cache", tmp_path / "d.jsonl"
    rows = _mixed_rows(tmp_path, 30)
    scan = prescan.scan_files

    def scan_then_edit(*args, **kwargs):
        result = scan(*args, **kwargs)
        write_jsonl(ann, rows + [{"conversations": conv("Appended while scanning?", "Yes.")}])
        return result

    monkeypatch.setattr(prescan, "scan_files", scan_then_edit)
    first, r1 = _build(tmp_path, tokenizer, rows, cache_dir=cache)
    monkeypatch.setattr(prescan, "scan_files", scan)
    assert r1.plan_source == "cache-miss" and len(first) == len(rows)
    again, r2 = _build(tmp_path, tokenizer, None, cache_dir=cache)
    assert r2.plan_source == "cache-miss" and len(again) == len(rows) + 1


def test_a_file_edited_while_its_touch_is_checked_is_scanned_again_next_time(tmp_path, tokenizer, monkeypatch):
    """A touched file is hashed to see whether its bytes changed; the stat recorded for it is the one from before
    the hash, so an edit landing meanwhile is caught by the next build."""
    import internvl_exp.data.prescan as prescan

    cache, ann = tmp_path / "cache", tmp_path / "d.jsonl"
    rows = _mixed_rows(tmp_path, 30)
    _build(tmp_path, tokenizer, rows, cache_dir=cache)
    os.utime(ann, ns=(1, 1))  # touched: same bytes, another stat
    fingerprint = prescan.file_fingerprint

    def hash_then_edit(path):
        digest = fingerprint(path)
        write_jsonl(ann, rows + [{"conversations": conv("Appended while hashing?", "Yes.")}])
        return digest

    monkeypatch.setattr(prescan, "file_fingerprint", hash_then_edit)
    assert _build(tmp_path, tokenizer, None, cache_dir=cache)[1].plan_source == "cache-hit"  # the old bytes matched
    monkeypatch.setattr(prescan, "file_fingerprint", fingerprint)
    again, report = _build(tmp_path, tokenizer, None, cache_dir=cache)
    assert report.plan_source == "cache-miss" and len(again) == len(rows) + 1


def test_the_key_covers_tokenizer_and_settings(tmp_path, tokenizer):
    from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

    cache = tmp_path / "cache"
    _build(tmp_path, tokenizer, _mixed_rows(tmp_path, 12), cache_dir=cache)
    assert _build(tmp_path, tokenizer, None, cache_dir=cache, max_seq_length=1024)[1].plan_source == "cache-miss"
    other = load_tiny_tokenizer()
    other.add_tokens(["<extra_token>"])
    assert _build(tmp_path, other, None, cache_dir=cache)[1].plan_source == "cache-miss"
    assert _build(tmp_path, tokenizer, None, cache_dir=cache, length_policy="truncate")[1].plan_source == "cache-miss"
    assert _build(tmp_path, tokenizer, None, cache_dir=cache)[1].plan_source == "cache-hit"


def test_the_plan_is_compact():
    """Bytes per planned sample, from the row layout: what a million-line plan costs each process."""
    per_row = sum(np.dtype(t).itemsize for t in ROW_FIELDS.values())
    assert per_row <= 60  # + ~2 bytes of tiles per image, + 8 bytes of epoch order (docs/benchmarks.md)


SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    from internvl_exp.data.dataset import ImageSettings, build_dataset
    from internvl_exp.data.sources import load_entries
    from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

    entries = load_entries(None, {{"d": {{"annotation": {ann!r}, "root": {root_media!r}}}}})
    s = ImageSettings(tile_size=32, tokens_per_tile=4, max_dynamic_patch=4, min_num_frame=2, max_num_frame=4)
    ds, report = build_dataset(entries, load_tiny_tokenizer(), "internvl2_5", s, 2048, cache_dir={cache!r}, scan_workers=1)
    print(json.dumps({{"plan": report.plan_source, "rows": len(ds.plan)}}))
    """
)


@pytest.mark.slow
def test_two_processes_started_at_once_scan_once(tmp_path):
    """Like the ranks of a node: the first takes the lock and scans, the other waits and loads the cache."""
    rows = _mixed_rows(tmp_path, 3000)  # long enough that both processes are in the build at the same time
    ann = write_jsonl(tmp_path / "d.jsonl", rows)
    code = SCRIPT.format(root=str(ROOT), ann=str(ann), root_media=str(tmp_path), cache=str(tmp_path / "cache"))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(r["plan"] for r in results) == ["cache-hit", "cache-miss"]
    assert results[0]["rows"] == results[1]["rows"] == 3000


def test_an_annotation_file_changed_during_the_run_stops_with_a_clear_message(tmp_path, tokenizer):
    ds, _ = _build(tmp_path, tokenizer, _mixed_rows(tmp_path, 6), on_error="skip")
    (tmp_path / "d.jsonl").write_text("{oops\n" * 200)
    with pytest.raises(DataError, match=r"d.jsonl:1: the annotation file changed after the pre-flight scan"):
        ds[0]


def test_a_dying_scan_worker_stops_the_scan_with_a_clear_error(tmp_path, tokenizer, monkeypatch):
    import internvl_exp.data.prescan as prescan
    from internvl_exp.data.planner import Planner

    monkeypatch.setattr(prescan, "MIN_CHUNK", 512)  # several chunks, so the pool is used
    rows = _mixed_rows(tmp_path, 60)
    rows[45] = {"conversations": conv("DIE", "now")}
    ann = write_jsonl(tmp_path / "d.jsonl", rows)
    entries = load_entries(None, {"d": {"annotation": str(ann), "root": str(tmp_path)}})

    class Dying(Planner):  # a worker killed mid-scan (as by the out-of-memory killer)
        def plan(self, entry, line):
            if '"DIE"' in line.text and os.getpid() != parent:
                os._exit(9)
            return super().plan(entry, line)

    parent = os.getpid()
    planner = Dying(tokenizer, "internvl2_5", SETTINGS, 2048, "drop")
    with pytest.raises(prescan.ScanWorkerError, match="scan worker process died .*9.*data.scan_workers"):
        prescan.build_plan(entries, planner, workers=2)
    assert not [p for p in __import__("multiprocessing").active_children() if p.is_alive()]
