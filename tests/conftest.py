"""Shared fixtures: compose the real config tree (Hydra's compose API) into a temporary output dir."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))

# Never touch the network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`make test` runs one worker per core) every worker and the runs it starts would otherwise
# each spin one OpenMP thread per core: oversubscribed, they wait on each other's spinning threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def fixture(*parts: str) -> Path:
    """A file or folder committed under tests/fixtures/. A missing one is a broken checkout: fail, never skip."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"test fixture missing: {path} (it is committed in the repository; restore it with "
                                f"`git checkout -- {path.relative_to(ROOT)}`)")
    return path


def compose(overrides: list[str] | None = None, tmp_path: Path | None = None, demo_dir: Path | None = None,
            resolved: bool = True):
    """The run spec launch.py's job would resolve (config/resolve.py; not validated: tests check that
    themselves), or with resolved=False the config as Hydra composes it. Run dir under tmp_path when given."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from internvl_exp.config.schema import register_configs

    register_configs(project_root=str(ROOT))
    extra = []
    if tmp_path is not None:
        extra.append(f"paths.output_dir={tmp_path / 'outputs'}")
    if demo_dir is not None:
        extra.append(f"paths.demo_data_dir={demo_dir}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = hydra_compose(config_name="config", overrides=extra + list(overrides or []))
    if not resolved:
        return composed
    from internvl_exp.config.resolve import resolve

    return resolve(composed, list(overrides or []), check=False)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from internvl_exp.data.demo import generate_demo_data

    d = tmp_path_factory.mktemp("demo") / "demo_data"
    generate_demo_data(d)
    return d


@pytest.fixture(scope="session")
def tokenizer():
    from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

    return load_tiny_tokenizer()


# Runs launch.py as its __main__ and prints which heavy modules were imported when it exited (the launch itself
# runs unchanged): "EXIT=<code>" and "HEAVY=<modules>" on stderr.
_HEAVY_PROBE = """
import runpy, sys
sys.argv = ["launch.py", *sys.argv[1:]]
try:
    runpy.run_path({launch!r}, run_name="__main__")
except SystemExit as e:
    print(e.code if isinstance(e.code, str) else "", file=sys.stderr)
    print("EXIT=" + str(e.code if isinstance(e.code, int) else 1), file=sys.stderr)
print("HEAVY=" + ",".join(m for m in ("torch", "transformers") if m in sys.modules), file=sys.stderr)
"""


def launch_importing(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python launch.py ARGS` that also reports, on stderr, its exit code and whether torch/transformers were
    imported by then (for checks that a failure comes before the heavy imports)."""
    return subprocess.run([sys.executable, "-c", _HEAVY_PROBE.format(launch=str(ROOT / "launch.py")), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env or {**os.environ})


@contextlib.contextmanager
def held_launch(args: list[str], env: dict, sentinel: Path):
    """Run tests/hold_launch.py until it holds (writes `sentinel`); yield the process, then kill -9 it."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hold_launch.py"), *args], cwd=ROOT,
                            env={**os.environ, **env, "HOLD_SENTINEL": str(sentinel)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not sentinel.exists():
            assert proc.poll() is None, "the run ended before reaching the hold"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        yield proc
    finally:
        proc.kill()  # SIGKILL: nothing runs after it
        proc.wait()


def kill_at_hold(args: list[str], env: dict, sentinel: Path) -> None:
    """kill -9 the launch exactly where tests/hold_launch.py holds it (env: HOLD_AT_STEP=N or HOLD_FINAL=1)."""
    with held_launch(args, env, sentinel):
        pass


def run_launch(args: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python launch.py ARGS` in a subprocess (the real entry point)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """The tiny model's random init saved as a checkpoint (with its processor), for `model=local`: runs that load
    weights start from the same ones whatever builds them (ZeRO-3's partitioned init draws other random weights)."""
    import torch

    from internvl_exp.models.loading import load_model, load_processor

    cfg = compose()
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_checkpoint")
    load_model(cfg.model, tokenizer).save_pretrained(out)
    load_processor(cfg.model, tokenizer, cfg.resolved.tokens_per_tile).save_pretrained(out)
    return out
