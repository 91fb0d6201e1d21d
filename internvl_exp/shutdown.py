"""How our commands end: without Python's last garbage collection (every command), or without any interpreter
teardown (processes that ran a gloo process group).

At exit the interpreter collects every tracked object one last time; with torch and transformers imported that
walk takes ~2 s on 2 cores (measured: 2.5 s -> 0.5 s of exit), longer than a plan or a short run's own work.
The operating system frees the memory anyway. What is skipped: only `__del__` of objects caught in reference
cycles; files are closed where they are written, and logging, wandb and the other libraries flush in their
own exit handlers, which run whatever their order relative to this one.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, NoReturn


def skip_final_collection() -> None:
    """Call in a command's `__main__` block: at exit, every object alive is frozen out of the last collection."""
    import atexit
    import gc

    atexit.register(gc.freeze)  # frozen objects are never examined by a collection, the interpreter's last included


def exit_without_teardown(status: int) -> NoReturn:
    """End a process that ran a gloo process group with `status`, skipping the interpreter's and C++'s teardown.

    At exit gloo's worker threads can be destroyed still joinable ("terminate called without an active exception",
    SIGABRT), even after destroy_process_group: CI saw ranks of finished 2-process runs end so (a test's torchrun
    worker, a SLURM job's rank), failing a run that had succeeded. The run's own outputs are written and closed by
    now; what exit would still do is flush logging and the standard streams, done here first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(status)


def finish(main: Callable[[], Any]) -> NoReturn:
    """Run a command's `main` and exit with its status (an int it returns or exits with; None is 0). A rank of a
    distributed launch (torchrun and the other launchers set LOCAL_RANK) that loaded torch.distributed exits
    without teardown (`exit_without_teardown`); any other process as usual, without the last collection."""
    skip_final_collection()
    try:
        status = main()
    except SystemExit as e:
        status = e.code
    if isinstance(status, str):  # SystemExit("message"): printed, status 1, as the interpreter does
        print(status, file=sys.stderr)
        status = 1
    elif not isinstance(status, int):
        status = 0
    if "LOCAL_RANK" in os.environ and "torch.distributed" in sys.modules:
        exit_without_teardown(status)
    sys.exit(status)
