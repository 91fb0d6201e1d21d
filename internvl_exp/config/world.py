"""How many training processes a launch starts, and whether an existing process group agrees. Light: no torch."""

from __future__ import annotations

import os
from typing import Any


def planned_world_size(distributed: Any, env: dict[str, str] | None = None) -> int:
    """Training processes the launch starts: nproc_per_node x nnodes (SLURM: gpus_per_node x nodes, which those
    follow). Inside an already started group (WORLD_SIZE set, e.g. a tool under torchrun), that group's size."""
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE"):
        return int(env["WORLD_SIZE"])
    return int(distributed.nproc_per_node) * int(distributed.nnodes)


def world_problems(distributed: Any, env: dict[str, str]) -> list[str]:
    launched = env.get("WORLD_SIZE")
    planned = planned_world_size(distributed, env={})  # what `distributed` alone starts
    if launched and distributed.name != "single" and int(launched) != planned:
        return [f"distributed: this process runs in a group of WORLD_SIZE={launched} processes, but "
                f"distributed.nproc_per_node x nnodes = {planned}; launch with distributed=single inside an "
                "existing group, or unset WORLD_SIZE and let distributed start the processes"]
    return []
