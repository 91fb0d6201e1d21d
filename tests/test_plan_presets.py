"""Every model preset plans: the planner builds each one on the meta device (in this process: torch and
transformers import once for all of them), and a preset with unsourced dims plans from what is sourced plus the
values of internvl_exp/models/assumed_arch.py, each said in the plan, while random init stays refused."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import CONF, ROOT, compose

from internvl_exp.config.arch_rules import missing_arch_fields, random_init_refusal
from internvl_exp.train.planning.memory_plan import format_plan, plan_memory

PRESETS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem not in ("tiny", "local"))

# Total parameters published for the release, in billions (checked against each plan): the InternVL README model zoo (OpenGVLab/InternVL
# README.md L104-129, InternVL3.5 "#Total Param") and the InternVL2 cards ("Model Size"). Independent of the
# presets' dims, so a wrong assumed backbone shows here.
TOTALS = {
    "internvl2_1b": 0.9, "internvl2_2b": 2.2, "internvl2_8b": 8.1, "internvl2_40b": 40.0, "internvl2_76b": 76.0,
    "internvl3_5_1b": 1.1, "internvl3_5_2b": 2.3, "internvl3_5_4b": 4.7, "internvl3_5_8b": 8.5,
    "internvl3_5_14b": 15.1, "internvl3_5_38b": 38.4, "internvl3_5_30b_a3b": 30.8, "internvl3_5_241b_a28b": 240.7,
    "internvl3_5_gpt_oss_20b_a4b": 21.2,
}


def _compact(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_plans_and_says_what_it_assumed(name, tmp_path):
    cfg = compose([f"model={name}", f"paths.cache_dir={tmp_path}", "deepspeed=zero3", "trainer.bf16=true",
                   "distributed.nproc_per_node=8"])
    missing = [k.rsplit(".", 1)[1] for k in missing_arch_fields(cfg.model)]
    plan = plan_memory(cfg, gpu="H100")
    assert plan.model == name and plan.parameters > 0 and plan.peak_bytes > plan.weights_bytes > 0
    assert plan.fits is not None and plan.step_time_s and plan.step_time_s > 0
    if name in TOTALS:  # the README/cards print one decimal: half a unit of it, or 2% for the larger models
        total = TOTALS[name]
        assert abs(plan.parameters / 1e9 - total) <= max(0.05, 0.02 * total), f"{plan.parameters / 1e9:.2f}B vs {total}B"
    shown = _compact(format_plan(plan))
    if not missing:  # every dim sourced: nothing assumed, random init allowed
        assert plan.assumed_arch == [] and "preset value assumed" not in shown
        assert random_init_refusal(cfg.model) is None
        return
    # Each unsourced value the build needed is named, with its value and a reason, in the printed plan.
    said = " ".join(plan.assumed_arch)
    for field in missing:
        assert re.search(rf"\b{field}=\S+", said), f"{name}: {field} assumed silently"
    for line in plan.assumed_arch:
        assert line.startswith("assumed model.arch.text.") and ": " in line
        assert f"preset value {_compact(line)}" in shown
    # The preset itself is untouched: random init still refuses to guess them.
    assert random_init_refusal(cfg.model) is not None
    assert [k.rsplit(".", 1)[1] for k in missing_arch_fields(cfg.model)] == missing


def test_a_missing_value_without_a_recorded_assumption_is_refused(tmp_path):
    from internvl_exp.config.validate import ConfigError

    cfg = compose(["model=internvl3_9b", "model.arch.text.hidden_size=null", f"paths.cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"preset 'internvl3_9b' has no sourced value for "
                                          r"model\.arch\.text\.hidden_size, and the planner records no assumption"):
        plan_memory(cfg, gpu="H100")


def test_the_76b_plan_through_the_tool_reports_its_assumption(tmp_path):
    """The issue's command, end to end (MetaWorker process, summary over JSON, the printed plan)."""
    r = subprocess.run(
        [sys.executable, "-m", "internvl_exp.tools.plan", "model=internvl2_76b", "deepspeed=zero3",
         "distributed.nproc_per_node=8", f"paths.cache_dir={tmp_path}", "--gpu", "H100"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode in (0, 1), r.stderr
    out = _compact(r.stdout)
    assert "internvl2_76b on 8 GPU(s), ZeRO-3" in out and "verdict:" in out
    assert "preset value assumed model.arch.text.tie_word_embeddings=false: untied like" in out
