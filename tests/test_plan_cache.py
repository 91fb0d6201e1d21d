"""tools.plan keeps the meta model's summary (counts, FLOPs model, config fields) in paths.cache_dir: a second
plan of the same model and freeze gives the same plan without building it again (the imports of a build are
most of a plan's time), and a different freeze is planned afresh. The tool's own process never imports torch or
transformers: a first plan builds in its MetaWorker. Real tool, subprocesses, tiny preset."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

PROBE = """
import json, sys
from internvl_exp.tools.plan import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def _plan(tmp_path, *overrides: str, out: str) -> dict:
    args = [f"paths.cache_dir={tmp_path / 'cache'}", "trainer.device_memory_gb=80", *overrides,
            "--json", str(tmp_path / out)]
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**probe, "plan": json.loads((tmp_path / out).read_text())}


@pytest.mark.slow
def test_second_plan_of_a_model_reads_the_cache_and_imports_no_torch(tmp_path):
    first = _plan(tmp_path, "trainer.per_device_train_batch_size=2", out="a.json")
    assert first["rc"] == 0 and not first["torch"] and not first["transformers"]  # built in the worker
    assert first["plan"]["parameters"] > 0
    assert len(list((tmp_path / "cache" / "plan_models").glob("*.json"))) == 1

    [entry] = (tmp_path / "cache" / "plan_models").glob("*.json")
    written = entry.stat().st_mtime_ns
    second = _plan(tmp_path, "trainer.per_device_train_batch_size=2", out="b.json")
    assert entry.stat().st_mtime_ns == written  # read, not built and written again
    assert not second["torch"] and not second["transformers"]
    assert second["plan"] == first["plan"]

    # Another batch and ZeRO stage: the same summary, a different plan.
    third = _plan(tmp_path, "trainer.per_device_train_batch_size=8", "deepspeed=zero2", out="c.json")
    assert not third["torch"]
    assert third["plan"]["parameters"] == first["plan"]["parameters"]
    assert third["plan"]["activations_bytes"] > first["plan"]["activations_bytes"]

    # Another freeze: planned afresh, other trainable counts.
    full = _plan(tmp_path, "freeze=full", out="d.json")
    assert full["plan"]["trainable"] == full["plan"]["parameters"] > first["plan"]["trainable"]
    assert len(list((tmp_path / "cache" / "plan_models").glob("*.json"))) == 2
