"""A 2-process packed run (torchrun, gloo on CPU): both ranks take the same number of steps over disjoint packs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a 2-process packed run

HERE = Path(__file__).parent


def test_two_process_packed_run(tmp_path, demo_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         str(HERE / "ddp_packing_worker.py"), str(tmp_path), str(demo_dir)],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
    assert len(ranks[0]["ids"]) == len(ranks[1]["ids"]) == ranks[0]["steps"]
    # Disjoint shards of one stream: together the ranks trained each of the epoch's 192 samples once.
    assert ranks[0]["samples"] + ranks[1]["samples"] == 192
    assert ranks[0]["ids"] != ranks[1]["ids"]
