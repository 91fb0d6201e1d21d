"""A collective that failed because another rank stopped answering: which ranks, in one line.

A rank that hangs (stopped, deadlocked, its network gone) leaves the others waiting in an all-reduce; after
`distributed.timeout_s` their backend gives up ("Timed out waiting 1800000ms for recv operation"), and a rank
that dies makes theirs fail at once ("Connection reset by peer"). Neither message names the rank at fault. So a
rank whose collective failed says so under a key of the job's rendezvous store and waits briefly for the
others to say the same: the ranks that never do are the ones that stopped answering. The worker then exits with
one line naming them (launch/worker.py) and the launcher, which also knows which ranks were killed by a signal
(launch/agent.py), prints the headline.
"""

from __future__ import annotations

import re
import time
from typing import Any

# What gloo and NCCL say when a peer stopped answering or went away.
PEER_LOST = re.compile(r"timed out|connection reset|connection closed|broken pipe|"
                       r"communicator was aborted|watchdog caught collective|closed by peer", re.I)
KEY = "internvl_exp/collective_failed/"


def is_peer_loss(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because of another rank (not this rank's own mistake)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    if isinstance(error, getattr(dist, "DistError", ())) and not isinstance(error, getattr(dist, "DistStoreError", ())):
        return True
    return isinstance(error, RuntimeError) and bool(PEER_LOST.search(str(error)))


def silent_ranks(wait_s: float = 10.0) -> list[int] | None:
    """The ranks that did not report a failed collective within `wait_s` (this one reports first); None when
    the process group or its store is gone too."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        store: Any = dist.distributed_c10d._get_default_store()
        me, world = dist.get_rank(), dist.get_world_size()
        store.set(f"{KEY}{me}", str(time.time()))
        deadline = time.monotonic() + wait_s
        while True:
            silent = [r for r in range(world) if not store.check([f"{KEY}{r}"])]
            if not silent or time.monotonic() > deadline:
                return silent
            time.sleep(0.2)
    except Exception:  # the store lived in a process that is gone: nothing more to learn
        return None


def peer_loss_message(error: BaseException, timeout_s: int) -> str:
    """`rank 0: no answer from rank 1 in a collective ...`: one line with what to do."""
    import torch.distributed as dist

    me = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    silent = silent_ranks(min(10.0, max(1.0, timeout_s / 2)))
    who = (f"rank {silent[0]}" if len(silent) == 1 else f"ranks {', '.join(map(str, silent))}") if silent else \
        "another rank"
    timed_out = bool(re.search(r"timed out|timeout", str(error), re.I))
    what = (f"waited distributed.timeout_s={timeout_s} s in a collective for {who}, which stopped answering"
            if timed_out else f"lost {who} in a collective (it died or its connection broke)")
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return (f"rank {me}: {what} [{type(error).__name__}: {first}]. A stopped or hung rank: `kill -USR2 <pid>` prints "
            f"its Python stack (docs/distributed.md); re-run the same command to resume from the newest complete "
            f"checkpoint; raise distributed.timeout_s if a step, an eval or a save legitimately takes longer")
