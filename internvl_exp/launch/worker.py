"""One training process started by torchrun: `python -m internvl_exp.launch.worker <run_dir>`.

It loads the resolved config the Hydra job wrote into <run_dir>/config.yaml (OmegaConf only: no Hydra, no
launcher argv) and runs the same train.run as a single process. Rank 0 logs to the console and appends to
train.log, talks to the tracker and writes metrics.json (also `status: failed` when it fails); the other ranks
log warnings and errors to the console only.
"""

from __future__ import annotations

# The first instruction: catch the preemption signals (torchrun passed them on ignored; SLURM signals every
# process of the step, this one too, possibly while it is still importing). Caught now, acted on once training
# runs (launch/signals.py).
from internvl_exp.launch.signals import unshield

if __name__ == "__main__":
    unshield()

import faulthandler
import logging
import signal
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from internvl_exp.config.resolve import load_run_config
from internvl_exp.config.schema import Config
from internvl_exp.dist import barrier, is_main_process, leave_process_group, rank
from internvl_exp.launch.collective import is_peer_loss, peer_loss_message
from internvl_exp.launch.job import record_failure
from internvl_exp.outputs import RunDir
from internvl_exp.redact import ScrubFilter, configure
from internvl_exp.train.checkpointing.resume import PREEMPTED_EXIT_CODE, Preempted

log = logging.getLogger(__name__)


def setup_logging(run_dir: RunDir) -> None:
    main = is_main_process()
    fmt = logging.Formatter(f"[%(asctime)s][rank {rank()}][%(name)s][%(levelname)s] %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if main:
        handlers.append(logging.FileHandler(run_dir.log))  # appends after the Hydra job's lines
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(ScrubFilter())
        root.addHandler(h)
    root.setLevel(logging.INFO if main else logging.WARNING)
    if not main:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_warning()


def main(argv: list[str]) -> int:
    started = time.time()
    if len(argv) != 1:
        print("usage: python -m internvl_exp.launch.worker RUN_DIR (started by torchrun; see docs/distributed.md)",
              file=sys.stderr)
        return 2
    unshield()  # again when called directly (idempotent): the preemption signals are caught from here on
    # `kill -USR2 <pid>` prints every thread's Python stack: where a hung rank waits (docs/distributed.md).
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    rd = RunDir(Path(argv[0]))
    cfg = load_run_config(rd.config)  # the Hydra job's resolved spec, typed by the same schema
    configure(cfg.secrets)
    setup_logging(rd)
    from internvl_exp.train.recipe.run import run
    from internvl_exp.train.reporting.loggers import experiment_logger

    _init_cpu_process_group(cfg)
    try:
        with experiment_logger(cfg, rd, OmegaConf.to_container(cfg), is_main=is_main_process()):
            run(cfg, rd)
        leave_process_group()
    except Preempted:  # the checkpoint is saved and rank 0 wrote metrics.json (status: preempted)
        # Leave together: torchrun stops the other ranks as soon as one exits non-zero, and rank 0 may still be
        # writing metrics.json.
        barrier()
        return PREEMPTED_EXIT_CODE
    except Exception as e:
        if is_peer_loss(e):  # another rank stopped answering or died: one line naming it, no traceback here
            message = peer_loss_message(e, int(cfg.distributed.timeout_s))
            log.error("%s", message.split(" [", 1)[0])  # the launcher prints it whole, with what to do
            _traceback_to_file(e)
            error: BaseException = PeerLost(message)
        else:
            log.error("rank %d failed: %s: %s", rank(), type(e).__name__, e, exc_info=True)
            error = e
        _record_for_the_agent(error)
        if is_main_process():
            record_failure(rd, error, started)
        return 1
    return 0


def _init_cpu_process_group(cfg: Config) -> None:
    """On CPU, the gloo process group with distributed.timeout_s: TrainingArguments passes its ddp_timeout to the
    process group only off-CPU, and gloo's own default lets a stalled rank hang the job for 30 minutes."""
    from internvl_exp.train.recipe.args import use_cpu

    if not use_cpu(cfg.trainer):
        return
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=int(cfg.distributed.timeout_s)))


class PeerLost(RuntimeError):
    """A collective failed because of another rank (launch/collective.py); the message names it."""


def _traceback_to_file(error: BaseException) -> None:
    """The traceback of `error` to train.log only (rank 0's file handler); the console had the one line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "traceback of the failure above", None,
                            (type(error), error, error.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _record_for_the_agent(error: BaseException) -> None:
    """The error into torchrun's per-worker error file, so the agent (launch/agent.py) reports this rank's
    message rather than only its exit status."""
    import os

    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(error)
    except Exception:  # reporting must never hide the failure itself
        pass


if __name__ == "__main__":
    from internvl_exp.shutdown import finish

    finish(lambda: main(sys.argv[1:]))
