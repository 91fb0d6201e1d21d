"""The pair scan is cached and shared (data/preference_scan.py): processes started together scan once, a later run
loads the cache, and an edited line invalidates it. The oracle is the uncached scan of the same files."""

from __future__ import annotations

import pytest

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from golden_mpo import GOLDEN

ROOT = Path(__file__).resolve().parents[1]

# One "process" of a run: build the pairs with the cache and print where the scan came from.
BUILD = """
import json, sys
from internvl_exp.data.planner import ImageSettings
from internvl_exp.data.preference import PreferenceDataset, PreferenceEncoder
from internvl_exp.data.sources import load_entries
from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

data, cache = sys.argv[1], sys.argv[2]
inline = {"mpo_demo": {"root": data + "/images", "annotation": data + "/mpo_demo.jsonl", "max_dynamic_patch": 6}}
encoder = PreferenceEncoder(load_tiny_tokenizer(), "internvl2_5", ImageSettings(tile_size=56, tokens_per_tile=4), 512)
ds = PreferenceDataset(load_entries(None, inline), encoder, cache_dir=None if cache == "-" else cache)
print(json.dumps({"source": ds.scan_source, "rows": {k: v.tolist() for k, v in ds.rows.items()}}))
"""


def _start(data: Path, cache: str) -> subprocess.Popen:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-c", BUILD, str(data), cache], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow  # 2 processes, or a signal-driven end-to-end run (make test-fast leaves it out)
def test_two_processes_scan_once_then_a_run_reuses_it_and_an_edit_invalidates_it(tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(GOLDEN / "data", data)
    cache = str(tmp_path / "cache")

    both = [_result(p) for p in [_start(data, cache), _start(data, cache)]]  # two ranks started together
    assert sorted(r["source"] for r in both) == ["cache-hit", "cache-miss"]  # one scan, one load
    oracle = _result(_start(data, "-"))  # scanned without any cache
    assert oracle["source"] == "scan" and len(oracle["rows"]["dataset"]) == 7
    assert both[0]["rows"] == both[1]["rows"] == oracle["rows"]

    again = _result(_start(data, cache))  # the next run
    assert again["source"] == "cache-hit" and again["rows"] == oracle["rows"]

    # Edit one line (a longer chosen answer in line 2): the cached scan is stale, scanned again, and right.
    path = data / "mpo_demo.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    obj = json.loads(lines[1])
    obj["chosen"] += " And a few more words to make this answer longer."
    lines[1] = json.dumps(obj) + "\n"
    path.write_text("".join(lines))
    edited = _result(_start(data, cache))
    assert edited["source"] == "cache-miss"
    fresh = _result(_start(data, "-"))
    assert edited["rows"] == fresh["rows"]
    assert edited["rows"]["chosen_length"][1] > oracle["rows"]["chosen_length"][1]
    assert np.array_equal(edited["rows"]["rejected_length"], oracle["rows"]["rejected_length"])


def test_the_scan_does_not_depend_on_workers_or_chunks(tmp_path) -> None:
    """The golden pairs and the bad-pair fixture (7 kinds of problem), cut into chunks of a few lines and planned by
    2 forked workers, give the rows and problems of the one-process scan of whole files; and each row's offset and
    byte count re-read exactly its jsonl line."""
    from conftest import fixture
    from internvl_exp.data.planner import ImageSettings
    from internvl_exp.data.preference import PreferenceEncoder
    from internvl_exp.data.preference_scan import scan_pairs
    from internvl_exp.data.sources import load_entries
    from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

    data = tmp_path / "data"
    shutil.copytree(GOLDEN / "data", data)
    path = data / "mpo_demo.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n") + b"\n\n" + path.read_bytes().rstrip(b"\n"))  # blank line, no final \n
    bad = json.loads(fixture("bad_pairs", "meta.json").read_text())
    inline = {"golden": {"root": str(data / "images"), "annotation": str(path), "max_dynamic_patch": 6},
              **{n: {**s, "root": str(fixture("bad_pairs") / s["root"]),
                     "annotation": str(fixture("bad_pairs") / s["annotation"])} for n, s in bad.items()}}
    entries = load_entries(None, inline)
    encoder = PreferenceEncoder(load_tiny_tokenizer(), "internvl2_5", ImageSettings(tile_size=56, tokens_per_tile=4),
                                300)
    whole = scan_pairs(entries, encoder, workers=1, chunk_bytes=1 << 30)
    assert len(whole.rows["dataset"]) > 7 and len(whole.problems) >= 7
    for workers in (1, 2):
        cut = scan_pairs(entries, encoder, workers=workers, chunk_bytes=300)
        assert {k: v.tolist() for k, v in cut.rows.items()} == {k: v.tolist() for k, v in whole.rows.items()}
        assert cut.problems == whole.problems
    for d, line_no, offset, nbytes in zip(*(whole.rows[k] for k in ("dataset", "line_no", "offset", "nbytes"))):
        raw = entries[d].annotation.read_bytes()
        assert raw[offset:offset + nbytes].rstrip(b"\n") == raw.split(b"\n")[line_no - 1]
