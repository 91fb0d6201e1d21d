"""A single run that fails before its first optimizer step leaves no run directory, prints its error once and
no resume hint; a missing data file is found before torch is imported. Real launch.py processes."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, launch_importing

def _meta(tmp_path, annotation: str) -> str:
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"mine": {"root": str(tmp_path), "annotation": annotation}}))
    return str(meta)


def test_missing_data_files_fail_before_torch_and_before_any_directory(tmp_path):
    out = tmp_path / "outputs"
    for path, named in ((str(tmp_path / "nope.json"), "data.meta_path"),
                        (_meta(tmp_path, str(tmp_path / "absent.jsonl")), "annotation file")):
        res = launch_importing(["data=meta", f"data.meta_path={path}", f"paths.output_dir={out}"])
        err = res.stderr
        assert "EXIT=1" in err and err.rstrip().endswith("HEAVY="), err  # before torch was imported
        lines = [line for line in err.splitlines() if line and not line.startswith(("EXIT=", "HEAVY="))]
        assert len(lines) == 1 and lines[0].startswith("run failed: ") and named in lines[0], err
        assert not out.exists()


def test_bad_data_after_the_imports_says_it_once_and_leaves_nothing(tmp_path):
    good = {"id": 0, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yes"}]}
    (tmp_path / "a.jsonl").write_text(json.dumps(good) + "\n{broken\n")
    out = tmp_path / "outputs"
    res = subprocess.run([sys.executable, str(ROOT / "launch.py"), "data=meta",
                          f"data.meta_path={_meta(tmp_path, str(tmp_path / 'a.jsonl'))}", f"paths.output_dir={out}",
                          "run_name=r"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    both = res.stdout + res.stderr
    assert res.returncode == 1, both[-3000:]
    assert both.count("a.jsonl:2: invalid_json") == 1, both[-3000:]
    assert res.stderr.startswith("run failed: DataError")
    assert "to resume" not in both and "Run directory" not in both and "Traceback" not in both
    assert not (out / "default" / "r").exists() and not (out / "default").exists()
