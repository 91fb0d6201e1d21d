"""Config strictness: `+key` only where the schema has the key (or the node is free-form); `--cfg job`, the
validate tool and the launch give the same verdict and message; a rejected single run leaves no directory,
a rejected sweep job is recorded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, compose, run_launch


def _problems(overrides, tmp_path) -> str:
    from internvl_exp.config.validate import ConfigError, validate

    with pytest.raises(ConfigError) as e:
        validate(compose(overrides, tmp_path))
    return str(e.value)


def test_plus_key_on_a_schema_group_is_refused_with_the_keys_nearby(tmp_path):
    message = _problems(["+optimizer.lrr=1", "+trainer.resume_from_checkpoint=true", "+model.arch.text.num_hidden_layer=3"],
                        tmp_path)
    lines = message.splitlines()
    assert lines[0] == "invalid configuration:" and len(lines) == 4
    lrr = next(line for line in lines if line.startswith("  - optimizer.lrr: "))
    assert "did you mean optimizer.lr?" in lrr and "weight_decay" in lrr and "scheduler_kwargs" in lrr
    resume = next(line for line in lines if line.startswith("  - trainer.resume_from_checkpoint: "))
    assert "not a key of trainer" in resume and "max_steps" in resume and "save_steps" in resume
    nested = next(line for line in lines if line.startswith("  - model.arch.text.num_hidden_layer: "))
    assert "did you mean model.arch.text.num_hidden_layers?" in nested


def test_plus_key_on_a_top_level_typo_and_free_form_mappings(tmp_path):
    assert "seeds: not a key of the top level; did you mean seed?" in _problems(["+seeds=3"], tmp_path)
    from internvl_exp.config.validate import validate

    # Free-form mappings opt in to new keys: DeepSpeed's JSON, scheduler kwargs, per-part lr scales.
    cfg = compose(["deepspeed=zero2", "+deepspeed.config.zero_optimization.round_robin_gradients=true",
                   "+optimizer.scheduler_kwargs.num_cycles=0.5",
                   "+optimizer.part_lr_scale.vision=0.1"], tmp_path)
    validate(cfg)
    assert cfg.deepspeed.config.zero_optimization.round_robin_gradients is True



def test_cfg_job_the_validate_tool_and_the_launch_reject_with_one_message(tmp_path):
    out = tmp_path / "outputs"
    bad = ["data.on_error=maybe", "+optimizer.lrr=1"]
    launch = run_launch([f"paths.output_dir={out}", *bad])
    cfg_job = run_launch([f"paths.output_dir={out}", *bad, "--cfg", "job"])
    tool = subprocess.run([sys.executable, "-m", "internvl_exp.tools.validate", f"paths.output_dir={out}", *bad],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    for res in (launch, cfg_job, tool):
        assert res.returncode == 1, res.stderr
        assert "Traceback" not in res.stderr and res.stdout == ""
    assert launch.stderr == cfg_job.stderr == tool.stderr
    assert launch.stderr.startswith("invalid configuration:\n  - optimizer.lrr: not a key of optimizer")
    assert "  - data.on_error: 'maybe' is not 'strict' or 'skip'" in launch.stderr
    assert not out.exists()  # a rejected single run leaves no run directory (nor an experiment folder)

    ok = subprocess.run([sys.executable, "-m", "internvl_exp.tools.validate", "optimizer.lr=3e-4"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("config OK: model=tiny data=demo"), ok.stderr


def test_validation_on_the_fast_edge_imports_no_torch():
    probe = (
        "import sys\n"
        "from internvl_exp.tools.validate import main\n"
        "code = main(['data.on_error=maybe'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'peft', 'wandb') if m in sys.modules]\n"
        "print('CODE', code, 'HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "CODE 1 HEAVY []" in res.stdout, res.stdout + res.stderr
    assert "data.on_error" in res.stderr


@pytest.mark.slow
def test_a_sweep_records_the_job_that_fails_validation(tmp_path, demo_dir):
    out = tmp_path / "outputs"
    res = run_launch(["-m", f"paths.output_dir={out}", f"paths.demo_data_dir={demo_dir}", "experiment_name=v",
                      "trainer.max_steps=1", "trainer.save_final=false", "data.on_error=strict,maybe"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (sweep,) = (out / "v" / "multirun").iterdir()
    ok, bad = sorted((d for d in sweep.iterdir() if d.is_dir()), key=lambda d: d.name)
    assert json.loads((ok / "metrics.json").read_text())["status"] == "completed"
    failed = json.loads((bad / "metrics.json").read_text())
    assert failed["status"] == "failed" and failed["error_type"] == "ConfigError"
    assert "data.on_error: 'maybe' is not 'strict' or 'skip'" in failed["error"]
    assert (bad / "config.yaml").is_file()


def test_the_validate_tool_checks_every_job_of_a_grid_sweep():
    res = subprocess.run([sys.executable, "-m", "internvl_exp.tools.validate", "-m", "optimizer.lr=1e-3,2e-3",
                          "data.on_error=strict,maybe"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    bad = [line for line in res.stderr.splitlines() if line.startswith("job ")]
    assert bad == ["job 1 (optimizer.lr=0.001 data.on_error=maybe): invalid configuration:",
                   "job 3 (optimizer.lr=0.002 data.on_error=maybe): invalid configuration:"]
    ok = subprocess.run([sys.executable, "-m", "internvl_exp.tools.validate", "optimizer.lr=1e-3,2e-3"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("config OK (2 jobs):"), ok.stderr
