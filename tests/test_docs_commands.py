"""Every command in a fenced bash block of README.md and docs/*.md, checked so none rots.

Each command is read from the docs verbatim (continuation lines joined, comments dropped), placeholders such
as `/data/meta.json` or `outputs/default/<run_name>` replaced by real paths, and then:

  python launch.py ...               validated in process (tools.validate: the launch's composition and checks,
                                     every job of a sweep); `--help` and `--cfg job` run as they are, in a
                                     subprocess; README's first `python launch.py` really trains (2 steps).
  python -m internvl_exp.tools.X     its argument parser takes the arguments, and its overrides validate as
                                     launch.py's would (the tools that need a GPU, weights or a trained run
                                     directory are not run: their code paths have their own tests).
  python bench/X.py                  the script exists and declares every option the command passes.
  anything else                      (make, git, hf download, wandb sync, SLURM lines, ...) listed in SHELL with
                                     the reason it is not run here; a command of a new kind fails the test until
                                     it is handled or listed.

Documented failures (the docs show the error message) must fail with that message.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # every documented command, run verbatim in subprocesses

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.S | re.M)

# Commands not run here, by their first word, and why.
SHELL = {
    "make": "builds a .venv and runs the demo/suite: the CI job runs `make test`",
    "source": "shell setup",
    "git": "needs the network",
    "hf": "downloads from the Hub",
    "wandb": "`wandb sync` uploads",
    "tensorboard": "starts a server",
    "srun": "needs SLURM",
    "scontrol": "needs SLURM",
    "rc=$?;": "shell glue of the SLURM script",
    "cd": "runs another project (VLMEvalKit's run.py) on a GPU",
    "lmdeploy": "serves a model on a GPU (LMDeploy)",
    "vllm": "serves a model on a GPU (vLLM)",
}
# A documented failure: (part of the command, messages the docs promise).
EXPECTED_FAILURES = {
    "data.on_error=maybe +optimizer.lrr=1": ["did you mean optimizer.lr?", "'maybe' is not 'strict' or 'skip'"],
    "data.on_error=maybe --cfg job": ["'maybe' is not 'strict' or 'skip'"],
    "tools.validate data.on_error=maybe": ["'maybe' is not 'strict' or 'skip'"],
}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def doc_commands() -> list[Command]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for block in FENCE.finditer(text):
            first_line = text[: block.start(1)].count("\n") + 1
            pending, start = "", 0
            for i, raw in enumerate(block.group(1).splitlines()):
                line = raw.strip()
                if not pending and (not line or line.startswith("#")):
                    continue
                if not pending:
                    start = first_line + i
                if line.endswith("\\"):
                    pending += line[:-1] + " "
                    continue
                out.append(Command(doc.relative_to(ROOT).as_posix(), start, pending + line))
                pending = ""
    return out


COMMANDS = doc_commands()


@pytest.fixture(scope="module")
def places(tmp_path_factory, demo_dir):
    """Real paths for the docs' placeholders."""
    tmp = tmp_path_factory.mktemp("docs")
    run_dir = tmp / "outputs" / "default" / "a_run"
    run_dir.mkdir(parents=True)
    model_dir = tmp / "my-internvl"
    model_dir.mkdir()
    return {
        "/data/meta.json": str(demo_dir / "meta.json"),
        "/path/to/meta.json": str(demo_dir / "meta.json"),
        "/data/val_meta.json": str(demo_dir / "meta.json"),
        "/data/my-internvl": str(model_dir),
        "outputs/default/<run_name>": str(run_dir),
        "outputs/my_first/lora_r16": str(run_dir),
        "RUN_DIR": str(run_dir),
        "outputs/default/multirun/<sweep_name>": str(tmp / "sweep"),
        "_tmp": str(tmp),
        "_demo": str(demo_dir),
    }


def _args(cmd: Command, places: dict[str, str], skip: int) -> list[str]:
    text = cmd.text
    for placeholder, real in places.items():
        if not placeholder.startswith("_"):
            text = text.replace(placeholder, real)
    return shlex.split(text, comments=True)[skip:]


def _expected_failure(cmd: Command) -> list[str] | None:
    return next((msgs for part, msgs in EXPECTED_FAILURES.items() if part in cmd.text), None)


def _env_overrides(places: dict[str, str]) -> list[str]:
    # Where the demo data is; outputs and caches in the test's folder, never the repo's.
    return [f"paths.demo_data_dir={places['_demo']}", f"paths.output_dir={places['_tmp']}/outputs"]


def _validate(cmd: Command, overrides: list[str], places: dict[str, str], capsys) -> None:
    from internvl_exp.tools.validate import main as validate

    capsys.readouterr()
    rc = validate([*overrides, *_env_overrides(places)])
    out = capsys.readouterr()
    expected = _expected_failure(cmd)
    if expected:
        assert rc == 1, f"{cmd}: documented to fail, but validates"
        for message in expected:
            assert message in out.err, f"{cmd}: {message!r} not in {out.err!r}"
    else:
        assert rc == 0, f"{cmd}:\n{out.err}"


def _subprocess(cmd: Command, args: list[str], places: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def _check_launch(cmd: Command, places: dict[str, str], capsys) -> str:
    args = _args(cmd, places, 2)
    if "--help" in args:
        proc = _subprocess(cmd, ["launch.py", *args], places)
        assert proc.returncode == 0 and "Config groups" in proc.stdout, f"{cmd}:\n{proc.stderr}"
        assert "print_config" in proc.stdout
        return "ran"
    if "--cfg" in args:
        at = args.index("--cfg")  # overrides before the options (Hydra's parser)
        proc = _subprocess(cmd, ["launch.py", *args[:at], *_env_overrides(places), *args[at:]], places)
        expected = _expected_failure(cmd)
        if expected:
            assert proc.returncode != 0, cmd
            assert all(m in proc.stdout + proc.stderr for m in expected), f"{cmd}:\n{proc.stderr}"
        else:
            assert proc.returncode == 0 and "model:" in proc.stdout, f"{cmd}:\n{proc.stderr}"
        return "ran"
    _validate(cmd, [a for a in args if a not in ("-m", "--multirun")], places, capsys)
    return "validated"


def _check_tool(cmd: Command, places: dict[str, str], capsys) -> str:
    import importlib

    args = _args(cmd, places, 3)
    tool = shlex.split(cmd.text, comments=True)[2].rsplit(".", 1)[1]
    module = importlib.import_module(f"internvl_exp.tools.{tool}")
    if tool == "validate":
        _validate(cmd, [a for a in args if a not in ("-m", "--multirun")], places, capsys)
        return "ran"
    if tool == "report":  # its argument is a directory; the figure code has its own test
        assert len(args) == 1
        return "parsed"
    if "--help" in args:
        with pytest.raises(SystemExit) as e:
            module.parse_args(args)
        assert e.value.code == 0
        return "ran"
    parsed = module.parse_args(args)
    overrides = list(getattr(parsed, "overrides", None) or [])
    if tool == "plan":  # a plan composes the run (it may plan 8 processes before choosing how to start them)
        from internvl_exp.launch.precheck import compose_config

        compose_config([*overrides, *_env_overrides(places)])
        return "parsed and composed"
    if overrides:
        _validate(cmd, overrides, places, capsys)
        return "parsed and validated"
    return "parsed"


def _check_bench(cmd: Command, places: dict[str, str]) -> str:
    args = _args(cmd, places, 1)
    script = ROOT / args[0]
    assert script.is_file(), cmd
    source = script.read_text()
    for flag in (a for a in args[1:] if a.startswith("--")):
        assert f'"{flag}"' in source, f"{cmd}: {script.name} has no option {flag}"
    return "parsed"


def check(cmd: Command, places: dict[str, str], capsys) -> str:
    words = shlex.split(cmd.text, comments=True)
    if words[:2] == ["python", "launch.py"]:
        return _check_launch(cmd, places, capsys)
    if words[:2] == ["python", "-m"] and words[2].startswith("internvl_exp.tools."):
        return _check_tool(cmd, places, capsys)
    if words[0] == "python" and words[1].startswith("bench/"):
        return _check_bench(cmd, places)
    assert words[0] in SHELL, f"{cmd}: a command of a new kind: handle it in this test or list it in SHELL"
    return "not run: " + SHELL[words[0]]


def test_the_docs_have_commands_to_check():
    docs = {c.doc for c in COMMANDS}
    assert {"README.md", "docs/quickstart.md", "docs/inference.md", "docs/distributed.md"} <= docs
    assert len(COMMANDS) > 50


def test_every_doc_command_works_verbatim(places, capsys):
    """All commands in one test: one composition cache, and one line per command in the failure list."""
    failures, done = [], {}
    for cmd in COMMANDS:
        if any(key.endswith(f": {cmd.text}") for key in done):  # the same command in another doc
            continue
        try:
            done[str(cmd)] = check(cmd, places, capsys)
        except Exception as e:  # noqa: BLE001  (every broken command listed, not just the first)
            failures.append(f"{cmd}\n    {e}")
    assert not failures, "\n".join(failures)
    assert sum(v.startswith("not run") for v in done.values()) < len(done) / 4


def test_the_readme_default_run_really_trains(tmp_path, demo_dir):
    """README's first `python launch.py`, as written, plus overrides that keep it short and in tmp_path."""
    cmd = next(c for c in COMMANDS if c.doc == "README.md" and shlex.split(c.text, comments=True) == ["python", "launch.py"])
    args = [*shlex.split(cmd.text, comments=True)[1:], "trainer.max_steps=2", "trainer.save_final=false",
            f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}", "run_name=readme"]
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "run finished (completed)" in proc.stdout and (tmp_path / "default" / "readme" / "metrics.json").is_file()
    assert "model     tiny" in proc.stdout and "planner   CPU run" in proc.stdout  # the header, not the tree
