"""Sweeps end to end through the real launch.py (Hydra multirun, real Trainer, real wandb offline files).

Three subprocess sweeps, each combining several checks (every process pays ~10 s of imports):
  1. a 2-job grid sweep (basic launcher, logger=wandb) with a fake secret in the environment and in a config
     value: layout, provenance, summary.md/png, each job's wandb run (config, loss history, naming), no secret;
  2. a joblib sweep where one job fails: the sweep completes and reports the failure;
  3. an Optuna search with 3 trials over lr and LoRA rank: optimization_results.yaml and the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_launch
from wandb_records import read_run

pytestmark = pytest.mark.slow  # multirun sweeps of real launches

# Secret because of its variable's name, not its shape (a credential-shaped value in a config is refused).
SECRET = "Heron-Quill-9f8e7d6c5b4a3210"
FAST = ["trainer.max_steps=10", "trainer.logging_steps=2", "trainer.save_final=false"]


def _sweep_dir(out: Path, experiment: str) -> Path:
    dirs = list((out / experiment / "multirun").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted((d for d in sweep.iterdir() if d.is_dir()), key=lambda d: int(d.name.split("_", 1)[0]))


def test_grid_sweep_with_wandb_layout_report_and_no_secret(tmp_path, demo_dir):
    out = tmp_path / "outputs"
    res = run_launch(
        ["-m", f"paths.output_dir={out}", f"paths.demo_data_dir={demo_dir}", "experiment_name=grid", "logger=wandb",
         "logger.wandb.tags=[demo-test]", "optimizer.lr=1e-3,3e-3", *FAST,
         f"data.system_message=You are helpful. {SECRET}"],
        env={"MY_API_KEY": SECRET},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sweep = _sweep_dir(out, "grid")
    assert len(sweep.name) == len("2026-01-01_00-00-00_000000"), sweep.name  # microsecond timestamp
    jobs = _job_dirs(sweep)
    assert len(jobs) == 2
    for num, (job, lr) in enumerate(zip(jobs, ("0.001", "0.003"))):  # values as Hydra's sweeper writes them
        # sorted k=v of the job's overrides: safe characters, the secret redacted, no paths or experiment name
        assert job.name == (f"{num}_data.system_message=You_are_helpful._REDACTED_,logger=wandb,optimizer.lr={lr},"
                            "trainer.logging_steps=2,trainer.max_steps=10,trainer.save_final=False")

    for job, lr in zip(jobs, (1e-3, 3e-3)):
        for name in ("config.yaml", "overrides.yaml", "train.log", "metrics.json", "provenance/git.json",
                     "provenance/git_diff.patch", "provenance/pip_freeze.txt", "provenance/environment.json",
                     "provenance/command.txt"):
            assert (job / name).is_file(), f"{job.name}/{name}"
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert config["optimizer"]["lr"] == lr
        assert config["run_name"] == job.name and config["sweep_name"] == sweep.name
        assert "<REDACTED>" in config["data"]["system_message"]
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["steps"] == 10
        # The demo has an eval split: evaluated once at the end of these 10 steps (eval_steps=50), and a sweep
        # optimises the final eval loss by default.
        assert metrics["optimized_metric"] == "final_eval_loss"
        assert metrics["objective"] == metrics["final_eval_loss"] != metrics["final_loss"]
        assert [h["step"] for h in metrics["eval_loss"]] == [10]
        tp = metrics["throughput"]
        assert tp["tokens"] > tp["supervised_tokens"] > 0 and 0 <= tp["padding_fraction"] < 1
        assert tp["tokens_per_s"] > 0 and tp["samples"] == 40 and tp["tiles"] > 0
        assert "torch==" in (job / "provenance/pip_freeze.txt").read_text()
        assert json.loads((job / "provenance/environment.json").read_text())["torch"]

        # The wandb offline run: resolved config (as in config.yaml), loss history, names from config.
        runs = list((job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, runs
        wb = read_run(runs[0])
        assert {k: v for k, v in wb["config"].items() if k != "_wandb"} == config
        assert wb["run"].display_name == job.name
        assert wb["run"].run_group == sweep.name
        assert set(wb["run"].tags) == {"demo-test", "model:tiny", "data:demo", "freeze:vision", "deepspeed:none"}
        history = [(int(h["train/global_step"]), h["train/loss"]) for h in wb["history"] if "train/loss" in h]
        expected = [(h["step"], h["loss"]) for h in metrics["loss_history"]]
        assert [s for s, _ in history] == [s for s, _ in expected] == [1, 2, 4, 6, 8, 10]
        assert [l for _, l in history] == pytest.approx([l for _, l in expected])
        assert all("train/tokens_per_s" in h for h in wb["history"] if "train/loss" in h)
        evals = [(int(h["train/global_step"]), h["eval/loss"]) for h in wb["history"] if "eval/loss" in h]
        assert evals == [(10, pytest.approx(metrics["final_eval_loss"]))]
        assert wb["summary"]["parameters/llm/trainable"] > 0 and wb["summary"]["parameters/vision/trainable"] == 0

    summary = (sweep / "summary.md").read_text()
    assert "2 completed" in summary and "`optimizer.lr`" in summary
    for job in jobs:
        assert f"(<{job.name}/>)" in summary
    assert "| 0 | optimizer.lr=0.001 | completed |" in summary  # the overrides column shows what varies
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    leaks = [p for p in sweep.rglob("*") if SECRET in p.name or (p.is_file() and SECRET.encode() in p.read_bytes())]
    assert not leaks, leaks
    assert SECRET not in res.stdout


def test_joblib_sweep_with_a_failing_job_completes_and_reports_it(tmp_path, demo_dir):
    out = tmp_path / "outputs"
    res = run_launch(
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"paths.output_dir={out}",
         f"paths.demo_data_dir={demo_dir}", "experiment_name=fail", "trainer.max_steps=4", "trainer.logging_steps=2",
         "trainer.save_final=false", "trainer.eval_strategy=no",
         f"data.meta_path={demo_dir / 'meta.json'},{tmp_path / 'missing' / 'meta.json'}"]
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sweep = _sweep_dir(out, "fail")
    ok, bad = _job_dirs(sweep)
    done = json.loads((ok / "metrics.json").read_text())
    assert done["status"] == "completed"
    # eval_strategy=no with eval data: the final model is still evaluated, once.
    assert [h["step"] for h in done["eval_loss"]] == [4] and done["objective"] == done["final_eval_loss"]
    failed = json.loads((bad / "metrics.json").read_text())
    assert failed["status"] == "failed" and "missing/meta.json" in failed["error"] and "meta_path" in failed["error"]
    assert "Traceback" in (bad / "train.log").read_text()
    summary = (sweep / "summary.md").read_text()
    assert "1 completed, 1 failed" in summary and "## Failed jobs" in summary and "missing/meta.json" in summary
    assert (sweep / "summary.png").exists()


def test_optuna_search_three_trials(tmp_path, demo_dir):
    out = tmp_path / "outputs"
    res = run_launch(
        ["hparams_search=optuna_lora", "hydra.sweeper.n_trials=3", f"paths.output_dir={out}",
         f"paths.demo_data_dir={demo_dir}", "experiment_name=opt", "trainer.max_steps=3", "trainer.logging_steps=1",
         "trainer.save_final=false"]
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sweep = _sweep_dir(out, "opt")
    jobs = _job_dirs(sweep)
    assert len(jobs) == 3
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"optimizer.lr", "freeze.lora.r"}
    objectives = [json.loads((j / "metrics.json").read_text())["objective"] for j in jobs]
    assert results["best_value"] == pytest.approx(min(objectives))
    for job in jobs:
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert config["freeze"]["name"] == "lora_llm" and config["freeze"]["lora"]["r"] in (4, 8, 16, 32)
    summary = (sweep / "summary.md").read_text()
    assert "3 completed" in summary and "Optuna best" in summary and "`freeze.lora.r`" in summary
