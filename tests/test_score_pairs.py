"""tools.score_pairs on the InternVL MPO golden data: the per-pair log-probs of InternVL's own MultimodalDPOTrainer
(golden mpo/results.pt) from the original-layout policy and reference checkpoints; 2 gloo processes write the
same file as one; --help stays light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from golden_mpo import GOLDEN, REFERENCE, policy_original

pytestmark = pytest.mark.slow  # subprocesses that load two models


def golden_meta(tmp: Path) -> Path:
    meta = json.loads((GOLDEN / "data" / "meta.json").read_text())
    for spec in meta.values():
        spec["root"], spec["annotation"] = str(GOLDEN / spec["root"]), str(GOLDEN / spec["annotation"])
    path = tmp / "meta.json"
    path.write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def golden_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score_pairs")
    return tmp, policy_original(tmp / "policy"), golden_meta(tmp)


def score_pairs(tmp: Path, policy: Path, meta: Path, out: Path, *extra: str, nproc: int = 1):
    args = [str(policy), "--reference", str(REFERENCE), "--out", str(out), "model=local", "model.image_size=56",
            "data.max_seq_length=512", f"data.meta_path={meta}", "data.generate_demo=false",
            f"paths.cache_dir={tmp / 'cache'}", *extra]
    if nproc == 1:
        cmd = [sys.executable, "-m", "internvl_exp.tools.score_pairs", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
               "-m", "internvl_exp.tools.score_pairs", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()], res


def test_reproduces_internvl_logps_of_policy_and_reference(golden_setup) -> None:
    tmp, policy, meta = golden_setup
    rows, res = score_pairs(tmp, policy, meta, tmp / "one.jsonl", "--batch-size", "3")
    assert "7 pairs scored" in res.stderr
    golden = torch.load(GOLDEN / "mpo" / "results.pt", weights_only=False)["step1"]  # rows in jsonl order
    assert [(r["dataset"], r["line"]) for r in rows] == [("mpo_demo", k) for k in range(1, 8)]
    for key, theirs in (("chosen_logp", "policy_chosen_logps"), ("rejected_logp", "policy_rejected_logps"),
                        ("reference_chosen_logp", "reference_chosen_logps"),
                        ("reference_rejected_logp", "reference_rejected_logps")):
        diff = max(abs(r[key] - float(v)) for r, v in zip(rows, golden[theirs]))
        assert diff < 1e-4, (key, diff)
    for r in rows:
        assert r["margin"] == pytest.approx((r["chosen_logp"] - r["reference_chosen_logp"])
                                            - (r["rejected_logp"] - r["reference_rejected_logp"]), abs=1e-9)
    # The supervised token counts are those of InternVL's labels (samples/lineK.pt: jsonl lines 0-4).
    for k in range(5):
        sample = torch.load(GOLDEN / "samples" / f"line{k}.pt", weights_only=False)
        for side in ("chosen", "rejected"):
            assert rows[k][f"{side}_tokens"] == int((sample[f"{side}_labels"][1:] != -100).sum()), (k, side)


def test_two_processes_write_the_same_file_as_one(golden_setup) -> None:
    tmp, policy, meta = golden_setup
    one, _ = score_pairs(tmp, policy, meta, tmp / "one_b2.jsonl", "--batch-size", "2")
    two, res = score_pairs(tmp, policy, meta, tmp / "two_b2.jsonl", "--batch-size", "2", nproc=2)
    assert "2 ranks" in res.stderr
    assert [(r["dataset"], r["line"], r["chosen_tokens"], r["rejected_tokens"]) for r in two] == \
           [(r["dataset"], r["line"], r["chosen_tokens"], r["rejected_tokens"]) for r in one]
    for a, b in zip(one, two):  # other batch companions: padding may move the last float32 bits
        for key in ("chosen_logp", "rejected_logp", "reference_chosen_logp", "reference_rejected_logp"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    assert not list(tmp.glob("two_b2.jsonl.partial-*"))


def test_a_config_that_tiles_for_another_model_is_a_one_line_error(golden_setup, tmp_path) -> None:
    tmp, policy, meta = golden_setup
    cmd = [sys.executable, "-m", "internvl_exp.tools.score_pairs", str(policy), "--out", str(tmp_path / "x.jsonl"),
           "model=local", f"data.meta_path={meta}", "data.generate_demo=false", f"paths.cache_dir={tmp / 'cache'}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2
    assert "the model's tiles are 56 px / 4 image tokens" in res.stderr and "model.image_size=56" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "x.jsonl").exists()


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom internvl_exp.tools import score_pairs\ntry:\n    score_pairs.main(['--help'])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    for field in ("chosen_logp", "reference_rejected_logp", "margin", "torchrun"):
        assert field in res.stdout
