"""bench/gpu.py runs end to end on CPU with --smoke (the tiny model), so the GPU script cannot rot unseen."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_bench_smoke_writes_its_table(tmp_path):
    out = tmp_path / "gpu.md"
    r = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| tiny")]
    measured = [line for line in rows if "skipped" not in line]
    # sdpa with and without activation checkpointing, padded and packed, always run; flash-attention rows say why not
    sdpa = {(("| on |" in line), ("| packed |" in line)) for line in measured if "| sdpa |" in line}
    assert sdpa == {(False, False), (False, True), (True, False), (True, True)}, measured
    for line in measured:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[5].replace(",", "")) > 0  # tokens/s
        assert float(cells[9]) >= 0  # planned peak (GiB)
    for line in rows:
        if "skipped" in line:
            assert "skipped: " in line and line.split("skipped: ")[1].split("|")[0].strip()
