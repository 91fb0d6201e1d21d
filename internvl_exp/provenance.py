"""Provenance of a run: what code, packages, machine and command produced it.

Writes `<run_dir>/provenance/`:
    git.json          commit, branch, dirty flag, `git status --porcelain`
    git_diff.patch    uncommitted changes against HEAD (staged and unstaged; untracked files are listed in git.json)
    pip_freeze.txt    every installed distribution as `name==version` (what `pip freeze` lists, without a subprocess)
    environment.json  Python, platform, host, torch/CUDA/cuDNN, devices, key library versions, selected env vars
    command.txt       the command line and working directory

Everything passes through redact.scrub: no secret value is ever written.
"""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from internvl_exp.outputs import write_json_atomic
from internvl_exp.redact import is_secret_name, scrub

# Environment variables worth recording (prefixes); secret-named ones are dropped even when they match.
ENV_PREFIXES = (
    "CUDA_", "NCCL_", "SLURM_", "TORCH", "HF_", "TRANSFORMERS_", "WANDB_", "OMP_", "MKL_", "MASTER_",
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "PYTHONHASHSEED", "INTERNVL_EXP_", "HYDRA_",
)
LIBRARIES = ("torch", "transformers", "accelerate", "peft", "deepspeed", "hydra-core", "omegaconf", "wandb",
             "tokenizers", "timm", "optuna", "numpy")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def git_info(repo: Path) -> tuple[dict[str, Any], str]:
    """(summary, diff) of the git checkout at `repo`; a summary saying why when it is not one."""
    commit = _git(["rev-parse", "HEAD"], repo)
    if commit is None:
        return {"commit": None, "note": f"{repo} is not a git checkout (or git is missing)"}, ""
    status = _git(["status", "--porcelain"], repo) or ""
    diff = _git(["diff", "HEAD", "--no-color"], repo) or ""
    info = {
        "commit": commit.strip(),
        "branch": (_git(["rev-parse", "--abbrev-ref", "HEAD"], repo) or "").strip() or None,
        "dirty": bool(status.strip()),
        "status": status.splitlines(),
        "untracked": [line[3:] for line in status.splitlines() if line.startswith("??")],
        "repo": str(repo),
    }
    return info, diff


def installed_packages() -> list[str]:
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return sorted(seen.values(), key=str.lower)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def device_info() -> dict[str, Any]:
    """torch, CUDA and the visible devices (torch is already imported by the time a run records this)."""
    try:
        import torch
    except ImportError:
        return {"torch": None}
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "devices": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append(
                {"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 2),
                 "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count}
            )
    return info


def environment_info() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) and not is_secret_name(k)}
    return {
        "python": sys.version,
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "libraries": {lib: _version(lib) for lib in LIBRARIES},
        **device_info(),
        "env": dict(sorted(env.items())),
    }


def command_line() -> str:
    return f"cd {shlex.quote(os.getcwd())} && {shlex.quote(sys.executable)} {shlex.join(sys.argv)}\n"


def write_provenance(folder: Path, repo: Path) -> None:
    """Write the provenance files into `folder` (created); every text is scrubbed of secrets."""
    folder.mkdir(parents=True, exist_ok=True)
    info, diff = git_info(repo)
    write_json_atomic(folder / "git.json", info)
    (folder / "git_diff.patch").write_text(scrub(diff))
    (folder / "pip_freeze.txt").write_text(scrub("\n".join(installed_packages()) + "\n"))
    write_json_atomic(folder / "environment.json", environment_info())
    (folder / "command.txt").write_text(scrub(command_line()))
