"""No secret on disk: a secret planted everywhere a user could put one, then every byte of every file searched.

One subprocess sweep (2 jobs) and one single run (under DeepSpeed ZeRO-2) through the real launch.py, both with
logger=wandb (offline), Trainer checkpoints every step and the final save. The secrets:
  - SECRET: the value of a secret-named environment variable (not credential-shaped, so the config may carry it:
    it is only known to be secret from the environment), also in run_name, in an override, in the wandb tags, in
    an uncommitted change (and an untracked file name) of the git repo the provenance records, and in the folder
    of a dataset's annotation file (so in every path the pre-flight plan cache records);
  - PATTERNED: matched by the run's own `secrets` pattern only, planted in an override;
  - GH_SECRET: a credential-shaped value of a secret-named environment variable (never in the config);
  - PASSWORD: the value of a *PASSWORD* variable, in a free-form DeepSpeed key (`+deepspeed.config.note=...`, which
    DeepSpeed keeps in its model and optimizer state files) and in a bad line's missing image name (a problem the
    plan cache records).
The oracle is a plain bytes search of every file (binary included) under the outputs and the cache directory (the
plan cache), plus the unpickled training_args.bin.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, compose, run_launch
from wandb_records import read_run

SECRET = "Quokka-Mirth-8817-Velvet"
PATTERNED = "acct-314159"
GH_SECRET = "ghp_" + "Zx9" * 12
PASSWORD = "Velvet-Otter-7788"
NEEDLES = (SECRET, PATTERNED, GH_SECRET, PASSWORD)
# DeepSpeed's JIT-built ops are kept where runs with the default paths.cache_dir keep them (built once per machine).
ENV = {"MY_SERVICE_TOKEN": SECRET, "GH_TOKEN": GH_SECRET, "DB_PASSWORD": PASSWORD,
       "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "internvl_exp" / "torch_extensions")}


def _git_repo(path: Path) -> Path:
    path.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    (path / "train.py").write_text("print('hello')\n")
    subprocess.run([*git, "init", "-q"], cwd=path, check=True)
    subprocess.run([*git, "add", "."], cwd=path, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=path, check=True)
    (path / "train.py").write_text(f"print('hello')\nAPI = '{SECRET}'  # an uncommitted change\n")
    (path / f"notes-{SECRET}.txt").write_text("untracked\n")
    return path


def _secret_meta(folder: Path, demo_dir: Path) -> Path:
    """A meta JSON in a folder named with SECRET: the demo's shapes, plus a dataset of one good line and one whose
    (missing) image name holds PASSWORD."""
    folder.mkdir()
    lines = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
             {"image": f"img-{PASSWORD}.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                                {"from": "gpt", "value": "A."}]}]
    (folder / "mine.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    meta = {"shapes": {"root": str(demo_dir), "annotation": str(demo_dir / "shapes.jsonl")},
            "mine": {"root": str(folder), "annotation": str(folder / "mine.jsonl")}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder / "meta.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_dir):
    tmp = tmp_path_factory.mktemp("secrets")
    repo = _git_repo(tmp / "repo")
    out = tmp / "outputs"
    meta = _secret_meta(tmp / f"data-{SECRET}", demo_dir)
    common = [
        f"paths.root_dir={repo}", f"paths.output_dir={out}", f"paths.cache_dir={tmp / 'cache'}",
        f"data.meta_path={meta}", "data.on_error=skip",
        f"paths.demo_data_dir={demo_dir}", "logger=wandb", f"logger.wandb.tags=[tag-{SECRET}]",
        "trainer.max_steps=2", "trainer.logging_steps=1", "trainer.save_strategy=steps", "trainer.save_steps=1",
        "trainer.save_total_limit=null",  # keep both checkpoints: both are searched
        "trainer.save_final=true", f"run_name=run-{SECRET}", 'secrets=["acct-[0-9]{6}"]',
        f"data.system_message=Be brief. {SECRET} {PATTERNED}",
    ]
    sweep = run_launch(["-m", *common, "experiment_name=sw", "optimizer.lr=1e-3,2e-3"], env=ENV)
    single = run_launch([*common, "experiment_name=one", "deepspeed=zero2", f"+deepspeed.config.note=db {PASSWORD}"],
                        env=ENV)
    for res in (sweep, single):
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {"out": out, "cache": tmp / "cache", "sweep": sweep, "single": single}


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.mark.slow
def test_no_file_name_or_byte_under_the_run_and_sweep_dirs_holds_a_secret(runs):
    out, cache = runs["out"], runs["cache"]
    files = _files(out) + _files(cache)
    names = [p for root in (out, cache) for p in root.rglob("*") if any(n in p.name for n in NEEDLES)]
    leaks = [(p, n) for p in files for n in NEEDLES if n.encode() in p.read_bytes()]
    assert not names and not leaks, (names, leaks)
    # What was searched is the real thing: checkpoints, the final model, wandb's record log, Hydra's record,
    # DeepSpeed's state files and the plan cache (with the bad line's problem and the annotation's path).
    suffixes = {p.name for p in files}
    assert {"training_args.bin", "trainer_state.json", "model.safetensors", "multirun.yaml", "manifest.json",
            "problems.jsonl", "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"} <= suffixes
    problems = [json.loads(line) for p in cache.rglob("problems.jsonl") for line in p.read_text().splitlines()]
    assert [f"{cache.parent}/data-<REDACTED>/mine.jsonl:2", "missing_media",
            f"image {cache.parent}/data-<REDACTED>/img-<REDACTED>.png does not exist (or is not a file)",
            "mine"] in problems
    manifests = [json.loads(p.read_text()) for p in cache.rglob("manifest.json")]
    assert f"{cache.parent}/data-<REDACTED>/mine.jsonl" in [f["path"] for m in manifests for f in m["files"]]
    assert len(list(out.rglob("checkpoint-*"))) == 6  # 2 per run, 3 runs
    assert len(list(out.rglob("run-*.wandb"))) == 3
    for res in (runs["sweep"], runs["single"]):
        for n in NEEDLES:
            assert n not in res.stdout and n not in res.stderr
        # Nothing had to be scrubbed after it was written (the safety net found nothing).
        assert "removed a secret" not in res.stdout + res.stderr


@pytest.mark.slow
def test_deepspeed_state_files_keep_the_scrubbed_config(runs):
    import torch

    (states,) = (runs["out"] / "one").rglob("checkpoint-2/global_step2/mp_rank_00_model_states.pt")
    assert torch.load(states, weights_only=False)["ds_config"]["note"] == "db <REDACTED>"


@pytest.mark.slow
def test_a_cached_plan_is_still_found_with_a_secret_in_the_path(runs):
    """The sweep's two jobs and the single run share one plan (the cache is matched by position, not by the
    scrubbed path): one scan, then cache hits."""
    log = "".join(r.stdout + r.stderr for r in (runs["sweep"], runs["single"]))
    assert log.count("data plan: cache hit") >= 2

@pytest.mark.slow
def test_training_args_bin_unpickled_holds_no_secret(runs):
    import torch

    bins = list(runs["out"].rglob("training_args.bin"))
    assert len(bins) == 9  # checkpoint-1, checkpoint-2 and final/ of each of the 3 runs
    for path in bins:
        args = torch.load(path, weights_only=False)
        text = "\n".join(repr(getattr(args, f.name, None)) for f in dataclasses.fields(args)) + repr(vars(args))
        assert not [n for n in NEEDLES if n in text], path
        if "one" in path.parts:  # the single run keeps its (scrubbed) run_name; sweep jobs are named by directory
            assert args.run_name == "run-<REDACTED>"


@pytest.mark.slow
def test_what_was_redacted_is_still_recorded(runs):
    single = next((runs["out"] / "one").iterdir())
    assert single.name.startswith("run-") and "REDACTED" in single.name
    config = yaml.safe_load((single / "config.yaml").read_text())
    assert config["run_name"] == "run-<REDACTED>"
    assert config["data"]["system_message"] == "Be brief. <REDACTED> <REDACTED>"
    assert config["secrets"] == ["acct-[0-9]{6}"]
    patch = (single / "provenance" / "git_diff.patch").read_text()
    assert "+API = '<REDACTED>'  # an uncommitted change" in patch
    git = json.loads((single / "provenance" / "git.json").read_text())
    assert git["dirty"] and git["untracked"] == ["notes-<REDACTED>.txt"]
    wb = read_run(next(single.rglob("run-*.wandb")))
    assert wb["run"].display_name == "run-<REDACTED>"
    assert set(wb["run"].tags) >= {"tag-<REDACTED>", "model:tiny"}
    assert wb["config"]["data"]["system_message"] == "Be brief. <REDACTED> <REDACTED>"
    metrics = json.loads((single / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 2


def test_a_credential_in_the_config_is_refused_with_where_to_put_it(tmp_path):
    from internvl_exp.config.validate import ConfigError, validate

    token = "hf_" + "aB3" * 11
    with pytest.raises(ConfigError) as e:
        validate(compose([f"data.system_message=use {token}", "logger=wandb",
                          "logger.wandb.tags=[AKIAABCDEFGHIJKLMNOP]"], tmp_path))
    message = str(e.value)
    assert "data.system_message: looks like a Hugging Face token (hf_…)" in message
    assert "logger.wandb.tags[0]: looks like an AWS access key (AKIA…)" in message
    assert "environment variable" in message and token not in message and "AKIAABCDEFGHIJKLMNOP" not in message


def test_a_credential_override_fails_the_launch_before_any_directory_exists(tmp_path):
    out = tmp_path / "outputs"
    token = "sk-" + "live" * 6
    res = run_launch([f"paths.output_dir={out}", f"run_name=x-{token}"])
    assert res.returncode == 1
    assert "run_name: looks like an API key (sk-…)" in res.stderr and "environment variable" in res.stderr
    assert token not in res.stderr + res.stdout
    assert not out.exists()


def test_scrub_covers_configured_patterns_and_credential_shapes(monkeypatch):
    from internvl_exp import redact

    monkeypatch.setenv("MY_SERVICE_TOKEN", SECRET)
    try:
        redact.configure([r"acct-[0-9]{6}"])
        text = f"a {SECRET} b {PATTERNED} c {GH_SECRET} d sk-{'x' * 20} task-{'y' * 20} use_hf_hub_download_now"
        assert redact.scrub(text) == (f"a <REDACTED> b <REDACTED> c <REDACTED> d <REDACTED> task-{'y' * 20} "
                                      "use_hf_hub_download_now")
        data = b"\x00" + PATTERNED.encode() + b"\xff" + SECRET.encode()
        assert redact.scrub_bytes(data) == b"\x00" + b"*" * len(PATTERNED) + b"\xff" + b"*" * len(SECRET)
    finally:
        redact.configure(None)
    assert redact.pattern_problems(["(", ".*", "ok-[0-9]+"]) == [
        "secrets[0]: not a regular expression (missing ), unterminated subpattern at position 0); "
        "escape special characters with \\",
        "secrets[1]: matches empty text, so it would redact everywhere; make it specific",
    ]


def test_the_console_wandb_records_is_scrubbed_before_wandb_sees_it(tmp_path, monkeypatch):
    import sys

    from internvl_exp.outputs import RunDir
    from internvl_exp.train.reporting.loggers import experiment_logger
    from wandb_records import records

    monkeypatch.setenv("MY_SERVICE_TOKEN", SECRET)
    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    with experiment_logger(compose(["logger=wandb"], tmp_path), rd, {"note": "plain"}):
        print(f"a library prints {SECRET}")
        sys.stderr.write(f"a library warns {SECRET}\n")
    (log,) = rd.root.rglob("run-*.wandb")
    console = ""
    for _ in range(120):  # wandb's service process may still be writing after finish() returns
        console = "".join(r.output_raw.line for r in records(log) if r.WhichOneof("record_type") == "output_raw")
        if "warns" in console:
            break
        time.sleep(0.5)
    assert "a library prints <REDACTED>" in console and "a library warns <REDACTED>" in console
    assert not [p for p in _files(rd.root) if SECRET.encode() in p.read_bytes()]
