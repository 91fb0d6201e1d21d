"""Who am I among the training processes: one place answers "how many?", "which one?" and "am I the main one?".

Inside the workers the truth is the initialised process group, else the variables torchrun sets (RANK,
WORLD_SIZE), else a single process. Only the main process writes files into the run directory, logs to
trackers and prints the summary (docs/distributed.md).

Light on purpose (imported by config validation): torch is consulted only when something already imported it.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def process_group() -> Any:
    """torch.distributed when its process group is initialised (and torch already loaded), else None."""
    dist = sys.modules.get("torch.distributed")  # only if torch is already loaded: validation must stay light
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def world_size() -> int:
    """The number of training processes running now: the process group, else WORLD_SIZE, else 1. (How many a
    launch will start is the run spec's `resolved.world_size`: config/world.py planned_world_size.)"""
    dist = process_group()
    if dist is not None:
        return int(dist.get_world_size())
    env = os.environ.get("WORLD_SIZE")
    return int(env) if env else 1


def rank() -> int:
    """This process's global rank (0 in a single process)."""
    dist = process_group()
    if dist is not None:
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main_process() -> bool:
    """True on global rank 0: the one process that writes files, talks to trackers and prints summaries."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (at once in a single process)."""
    dist = process_group()
    if dist is not None:
        dist.barrier()


def leave_process_group() -> None:
    """Every process done, then the process group torn down. The process then ends by shutdown.finish, without
    the interpreter's teardown, where gloo's threads can abort a rank after a run that succeeded."""
    dist = process_group()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()
