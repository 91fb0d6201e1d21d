"""Run directories, provenance, secrets, throughput/MFU, loggers and the sweep report, in process.

The Hydra multirun paths (grid, joblib, Optuna, wandb files) are covered end to end in test_sweeps.py.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, compose

SECRET = "sk-test-0123456789abcdef"


# -- directory names ------------------------------------------------------------------------------------------
def test_job_dirname_excludes_seed_and_path_like_keys_and_sanitises():
    from internvl_exp.launch.resolvers import job_dirname

    name = job_dirname(["seed=3", "paths.output_dir=/x", "data.meta_path=/d/m.json", "run_name=r",
                        "freeze=vision", "optimizer.lr=0.001", "+model.tiny.text_layers=4", "data.system_message=a/b c"])
    assert name == "data.system_message=a_b_c,freeze=vision,model.tiny.text_layers=4,optimizer.lr=0.001"
    assert job_dirname(["seed=1", "experiment_name=e"]) == "job"


def test_names_never_carry_a_secret_and_stay_short(monkeypatch):
    from internvl_exp.launch.resolvers import MAX_NAME, job_dirname, safe_name

    monkeypatch.setenv("MY_API_KEY", SECRET)
    assert SECRET not in job_dirname([f"data.system_message={SECRET}"])
    assert "REDACTED" in safe_name(f"run-{SECRET}")
    long_a, long_b = job_dirname([f"k={'a' * 300}"]), job_dirname([f"k={'a' * 299}b"])
    assert len(long_a) == len(long_b) == MAX_NAME and long_a != long_b  # a hash keeps capped names unique


# -- secrets --------------------------------------------------------------------------------------------------
def test_secret_values_follow_the_name_rule_and_skip_ordinary_words():
    from internvl_exp.redact import secret_values

    env = {"MY_API_KEY": SECRET, "HF_TOKEN": "hf_abcdefghijkl", "DB_PASSWORD": "hunter22", "aws_secret": "zzzzzzzz",
           "TOKENIZERS_PARALLELISM": "false", "SOME_KEY": "1234567", "SHORT_TOKEN": "abc", "HOME": "/home/u/secretive"}
    assert set(secret_values(env)) == {SECRET, "hf_abcdefghijkl", "hunter22", "zzzzzzzz"}


def test_log_records_and_tracebacks_are_scrubbed(monkeypatch, tmp_path):
    from internvl_exp.redact import ScrubFilter

    monkeypatch.setenv("MY_API_KEY", SECRET)
    path = tmp_path / "log.txt"
    handler = logging.FileHandler(path)
    handler.addFilter(ScrubFilter())
    logger = logging.getLogger("scrub-test")
    logger.addHandler(handler)
    try:
        logger.warning("key is %s", SECRET)
        try:
            raise ValueError(f"bad key {SECRET}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert SECRET not in text and text.count("<REDACTED>") == 2 and "ValueError: bad key <REDACTED>" in text


def test_scrub_tree_redacts_text_binary_and_names(monkeypatch, tmp_path):
    from internvl_exp.redact import scrub_tree

    monkeypatch.setenv("MY_API_KEY", SECRET)
    (tmp_path / "a.yaml").write_text(f"key: {SECRET}\n")
    (tmp_path / "b.bin").write_bytes(b"\xff\x00" + SECRET.encode() + b"\xfe")
    (tmp_path / f"dir-{SECRET}").mkdir()
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "weights.bin").write_bytes(b"\x00" * 8)
    changed = scrub_tree(tmp_path)
    assert len(changed) == 3
    assert yaml.safe_load((tmp_path / "a.yaml").read_text()) == {"key": "<REDACTED>"}  # still valid YAML
    data = (tmp_path / "b.bin").read_bytes()
    assert SECRET.encode() not in data and len(data) == len(SECRET) + 3  # same length: framing intact
    assert (tmp_path / "dir-_REDACTED_").is_dir() or (tmp_path / "dir-<REDACTED>").is_dir()
    assert not any(SECRET in p.name for p in tmp_path.rglob("*"))


# -- FLOPs and peak table -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.4), ("NVIDIA H200 NVL", 835.5), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA L40S", 362.05), ("NVIDIA L4", 121.0), ("NVIDIA A10G", None),
    ("cpu", None), ("Some Future GPU", None),
])
def test_peak_table(name, tflops):
    from internvl_exp.train.planning.flops import peak_tflops_for

    assert peak_tflops_for(name) == tflops


def test_flops_are_6n_when_everything_trains_and_forward_only_for_a_frozen_tower(tokenizer):
    import torch.nn as nn

    from internvl_exp.models.loading import config_tokens_per_tile, load_model
    from internvl_exp.models.registry import get_family
    from internvl_exp.train.planning.flops import FlopsModel

    cfg = compose([])
    model = load_model(cfg.model, tokenizer)
    family = get_family(cfg.model.family)
    tpt = config_tokens_per_tile(model.config)
    fm = FlopsModel.from_model(model, family, tpt)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert sum(w.total for w in fm.weights.values()) == linear
    assert fm.vision_tokens_per_tile == (64 // 8) ** 2 + 1 and fm.image_tokens_per_tile == tpt == 16

    n = {"vision": 3 * fm.vision_tokens_per_tile, "projector": 3 * tpt, "llm": 100, "lm_head": 100}
    attention = 4 * fm.llm_layers * fm.llm_attn_width * 5000 + 4 * fm.vision_layers * fm.vision_attn_width * 3 * fm.vision_tokens_per_tile**2
    for p in model.parameters():
        p.requires_grad = True
    fm_full = FlopsModel.from_model(model, family, tpt)
    expected = sum(6 * w.total * n[part] for part, w in fm_full.weights.items()) + 3 * attention
    assert fm_full.step_flops(100, 5000, 3) == pytest.approx(expected)

    for name, p in model.named_parameters():
        p.requires_grad = family.part_of(name) != "vision"
    fm_frozen = FlopsModel.from_model(model, family, tpt)
    vision = fm_frozen.weights["vision"].total * n["vision"]
    vision_attn = 4 * fm.vision_layers * fm.vision_attn_width * 3 * fm.vision_tokens_per_tile**2
    # the frozen tower costs its forward pass only: 2N instead of 6N, its attention once instead of three times
    assert expected - fm_frozen.step_flops(100, 5000, 3) == pytest.approx(4 * vision + 2 * vision_attn)
    # a frozen LLM still passes gradients back to a trainable projector: only its weight gradients go
    for name, p in model.named_parameters():
        p.requires_grad = family.part_of(name) == "projector"
    fm_mlp = FlopsModel.from_model(model, family, tpt)
    llm, head = (fm_mlp.weights[part].total * n[part] for part in ("llm", "lm_head"))
    assert expected - fm_mlp.step_flops(100, 5000, 3) == pytest.approx(4 * vision + 2 * vision_attn + 2 * llm + 2 * head)



def test_flops_count_a_full_part_once_beside_lora(tokenizer):
    """PEFT keeps an idle `original_module` copy of a part in `full` mode beside LoRA: not compute."""
    from internvl_exp.models.loading import config_tokens_per_tile, load_model
    from internvl_exp.models.registry import get_family
    from internvl_exp.train.planning.flops import FlopsModel
    from internvl_exp.train.tuning.trainable import make_trainable

    cfg = compose(["freeze=lora_llm", "freeze.parts.projector=full"])
    family = get_family(cfg.model.family)
    plain = load_model(cfg.model, tokenizer)
    tpt = config_tokens_per_tile(plain.config)
    before = FlopsModel.from_model(plain, family, tpt).weights["projector"].total
    setup = make_trainable(load_model(cfg.model, tokenizer), family, cfg.freeze, cfg.model)
    after = FlopsModel.from_model(setup.model, family, tpt).weights["projector"]
    assert after.total == before and after.trainable == before

# -- in-process jobs: loggers, provenance, failures, report ---------------------------------------------------
FAST = ["trainer.max_steps=4", "trainer.logging_steps=2", "trainer.save_final=false"]


def _job(tmp_path, demo_dir, overrides, run_dir, sweep_dir=None):
    from internvl_exp.launch.job import run_job

    cfg = compose([*FAST, *overrides], tmp_path, demo_dir)
    return run_job(cfg, run_dir, [*FAST, *overrides], sweep_dir)


@pytest.mark.slow
def test_single_run_with_tensorboard_writes_events_provenance_and_throughput(tmp_path, demo_dir, monkeypatch, capsys,
                                                                            caplog):
    monkeypatch.setenv("MY_API_KEY", SECRET)
    plain = "Otter-Lantern-5521"  # secret by its variable's name only, so the config may carry it (run_name)
    monkeypatch.setenv("MY_DB_PASSWORD", plain)
    run_dir = tmp_path / "outputs" / "default" / "tb"
    lines: list[str] = []
    catch = logging.Handler(logging.INFO)
    catch.emit = lambda record: lines.append(record.getMessage())
    ours = logging.getLogger("internvl_exp")
    ours.addHandler(catch)
    level, ours.level = ours.level, logging.INFO
    try:
        with caplog.at_level(logging.WARNING, logger="internvl_exp.redact"):
            value = _job(tmp_path, demo_dir, ["logger=tensorboard", "optimized_metric=throughput.tokens_per_s",
                                              f"run_name=tb-{plain}"], run_dir)
    finally:
        ours.removeHandler(catch)
        ours.setLevel(level)
    assert not [r for r in caplog.records if "removed a secret" in r.getMessage()]  # scrubbed before writing
    out = capsys.readouterr().out
    assert "├── model" not in out  # the config tree only with print_config=true
    assert f"Run directory: {run_dir}" in out
    # The short header instead: model, what trains, processes, outputs; then data size, parameters, planner.
    from internvl_exp.train.reporting.console_header import _count

    logged = "\n".join(lines)
    params = json.loads((run_dir / "params.json").read_text())["parameters"]["total"]
    samples = json.loads((run_dir / "metrics.json").read_text())["data"]["samples"]
    for line in ("model     tiny: random init from model.arch", "trains    freeze=vision: projector, llm, lm_head full; vision frozen",
                 "processes single process; no DeepSpeed", f"outputs   {run_dir} (full config: config.yaml",
                 f"data      {samples:,} samples (shapes 48, counting 48, compare 48, text 48); 4 optimizer steps",
                 f"params    {_count(params['trainable'])} of {_count(params['total'])} trainable "
                 f"({100 * params['trainable'] / params['total']:.1f}%): projector",
                 "planner   CPU run: predicted peak"):
        assert line in logged, line

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert value == metrics["objective"] == metrics["throughput"]["tokens_per_s"] > 0
    assert metrics["throughput"]["mfu"] is None and metrics["throughput"]["device"] == "cpu"  # no CPU peak
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not (run_dir / "wandb").exists()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["sweep_name"] is None and config["logger"]["name"] == "tensorboard"

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    git = json.loads((run_dir / "provenance" / "git.json").read_text())
    assert git["commit"] == head and isinstance(git["dirty"], bool)
    env = json.loads((run_dir / "provenance" / "environment.json").read_text())
    assert env["python"] and env["libraries"]["transformers"] and "MY_API_KEY" not in env["env"]
    # this process's own command line (pytest's, or an xdist worker's `python -c ...`)
    assert (run_dir / "provenance" / "command.txt").read_text().startswith(f"cd {shlex.quote(os.getcwd())} && ")
    assert shlex.join(sys.argv) in (run_dir / "provenance" / "command.txt").read_text()
    # TensorBoard gets the TrainingArguments (run_name included) as text: scrubbed before it sees them.
    assert not [p for p in run_dir.rglob("*") if p.is_file() and (SECRET.encode() in p.read_bytes()
                                                                   or plain.encode() in p.read_bytes())]


@pytest.mark.slow
def test_logger_none_writes_nothing_extra_and_a_failed_single_run_exits_nonzero(tmp_path, demo_dir, capsys):
    run_dir = tmp_path / "outputs" / "default" / "plain"
    _job(tmp_path, demo_dir, ["logger=none", "print_config=true"], run_dir)
    out = capsys.readouterr().out
    assert "├── model" in out and "max_seq_length:" in out  # print_config=true: the whole tree as well
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "overrides.yaml", "metrics.json", "provenance"} <= names
    assert not names & {"wandb", "tensorboard", "runs"} and not list(run_dir.rglob("*tfevents*"))

    bad = tmp_path / "outputs" / "default" / "bad"
    with pytest.raises(SystemExit) as e:
        _job(tmp_path, demo_dir, [f"data.meta_path={tmp_path / 'nope.json'}"], bad)
    assert "run failed" in str(e.value.code) and "nope.json" in str(e.value.code)
    assert "to resume" not in str(e.value.code)
    assert not bad.exists()  # failed before its first step: nothing to keep or resume

    with pytest.raises(SystemExit) as e:  # a config mistake: named key, no training
        _job(tmp_path, demo_dir, ["data.on_error=maybe"], tmp_path / "outputs" / "default" / "badcfg")
    assert "data.on_error" in str(e.value.code)
    assert not (tmp_path / "outputs" / "default" / "badcfg").exists()  # a rejected config leaves no run dir


@pytest.mark.slow
def test_sweep_jobs_are_named_after_their_directory_and_the_report_shows_failures(tmp_path, demo_dir, capsys):
    from internvl_exp.tools.report import main as report_main

    sweep = tmp_path / "outputs" / "default" / "multirun" / "s1"
    ok = _job(tmp_path, demo_dir, ["optimizer.lr=0.001"], sweep / "0_optimizer.lr=0.001", sweep)
    failed = _job(tmp_path, demo_dir, ["optimizer.lr=0.002", f"data.meta_path={tmp_path / 'nope.json'}"],
                  sweep / "1_optimizer.lr=0.002", sweep)
    assert isinstance(ok, float) and failed is None  # the sweeper records a failed trial and goes on
    config = yaml.safe_load((sweep / "0_optimizer.lr=0.001" / "config.yaml").read_text())
    assert config["run_name"] == "0_optimizer.lr=0.001" and config["sweep_name"] == "s1"

    assert report_main([str(sweep)]) == 0
    summary = (sweep / "summary.md").read_text()
    assert "1 completed, 1 failed" in summary and "nope.json" in summary and "`optimizer.lr`" in summary
    assert "| 0 | optimizer.lr=0.001, data.meta_path=– | completed |" in summary
    assert f"| 1 | optimizer.lr=0.002, data.meta_path={tmp_path / 'nope.json'} | failed |" in summary
    assert (sweep / "summary.png").stat().st_size > 10_000

    capsys.readouterr()
    assert report_main([str(tmp_path)]) == 2
    assert "no job directories" in capsys.readouterr().err
