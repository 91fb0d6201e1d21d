"""torchrun, with its failure report kept for the launcher: `python -m internvl_exp.launch.agent TORCHRUN_ARGS`.

The same command line as `python -m torch.distributed.run` (launch/torchrun.py builds it). torchrun's elastic
agent is the one process that sees how each worker ended (an exit status, or the signal that killed it), but it
says so in a 30-line `ChildFailedError` banner, after which the survivors' "Connection reset by peer"
tracebacks read like the cause. Here the agent runs in-process and its failures are written, one record per
failed rank, to `<run_dir>/worker_failures/node<N>.json` instead of that banner; the launcher (torchrun.py
`workers_outcome`) turns the first one into the one line that names the rank, what ended it and what to do.
The agent's own log lines about stopping the other workers are left out: the launcher's line says it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

FAILURES_DIR = "worker_failures"


def failure_records(failures: dict[int, Any], node_rank: int) -> list[dict[str, Any]]:
    """ChildFailedError.failures as JSON records (global rank, local rank, pid, exit code or signal, message)."""
    out = []
    for rank, f in sorted(failures.items()):
        signal_name = f.signal_name() if f.exitcode < 0 else None
        message = f.message.get("message", "") if isinstance(f.message, dict) else str(f.message or "")
        if signal_name or message.startswith("To enable traceback"):
            message = ""  # torchrun's generic text, not the worker's
        out.append({"rank": int(rank), "local_rank": int(f.local_rank), "node_rank": node_rank, "pid": int(f.pid),
                    "exitcode": int(f.exitcode), "signal": signal_name, "message": message,
                    "timestamp": int(f.timestamp)})
    return out


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv)
    # "Sending process N closing signal SIGTERM", "failed (exitcode: -9) local_rank: 1 ...": the launcher says it
    # once. torchrun's own OMP_NUM_THREADS notice stays (torch.distributed.run logs it).
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as e:
        node_rank = int(args.node_rank)
        out = Path(args.training_script_args[-1]) / FAILURES_DIR / f"node{node_rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"written": time.time(), "failures": failure_records(e.failures, node_rank)}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
