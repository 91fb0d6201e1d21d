"""Preemption: SIGTERM or SIGUSR1 saves a complete checkpoint at the next optimizer-step boundary and stops.

SLURM sends SIGTERM when it preempts or cancels a job (and, with `--signal=[B:]USR1@<seconds>`, SIGUSR1 that
many seconds before the time limit); Kubernetes and most schedulers send SIGTERM. The handler only sets a
flag; at the end of each optimizer step every rank combines its flag with the others' (one tiny all-reduce),
so all ranks stop at the same step even if the signal reached only some of them. The Trainer then saves a
checkpoint (marker included), run.py writes metrics.json with `status: preempted`, and the process exits
with PREEMPTED_EXIT_CODE. A second signal while waiting for the step to end is not caught again: it acts as
it would without us (the previous handler; the default one terminates the process).

A signal that arrives while the process starts (before this callback is installed; the worker catches the
signals from its first instruction, launch/signals.py `catch_early`) stops the run at its first step the same way.

Ctrl-C (SIGINT) does the same where Python would raise KeyboardInterrupt (a 100-line traceback and nothing
saved): the first saves at the next step and prints the resume command; a second one (or Ctrl-C after any other
signal) ends the process at once, by SIGINT, with one line and no traceback.

Inside a job that submitit runs (`-m hydra/launcher=submitit_slurm`), submitit has installed its own handlers
first: SIGTERM (logged) and its timeout/preemption signal (SIGUSR2 by default), which checkpoints and requeues
the job and exits. That signal is caught here too, and the handler that was there before is not dropped but
deferred: job.py calls it (launch/signals.py `pass_on`) once the checkpoint is complete and metrics.json says
preempted, so submitit requeues a job that has something to resume from; then the process exits 143.

Exit status 143 = 128 + SIGTERM, what a shell reports for a process ended by SIGTERM: wrappers and schedulers
that already treat that as "terminated, may be retried" (SLURM requeue scripts, torchrun restarts, Kubernetes
restart policies) do the same here. metrics.json tells the two apart: `status: preempted` means the
checkpoint was saved and a re-run of the same command resumes from it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from transformers import TrainerCallback

from internvl_exp.launch.signals import PREEMPTION_SIGNALS as SIGNALS  # noqa: F401
from internvl_exp.launch.signals import caught_signals, early_signal, handler_after_stop, is_early_handler, stop_now
from internvl_exp.train.checkpointing.resume import PREEMPTED_EXIT_CODE, Preempted  # noqa: F401  (light: job.py imports them)

log = logging.getLogger(__name__)


class PreemptionCallback(TrainerCallback):
    """Installs the signal handlers (main thread only) and turns a caught signal into save + stop."""

    def __init__(self, accelerator: Any = None) -> None:
        self.accelerator = accelerator
        self.received: str | None = None  # the signal this process caught
        self.stopped_by: str | None = None  # set on every rank once they agree to stop
        self.steps_done = 0  # optimizer steps this process finished (job.py: did the run fail before its first?)
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    # -- signals ------------------------------------------------------------------------------------------
    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            log.warning("preemption: not in the main thread, so SIGTERM/SIGUSR1 cannot be caught; a signal ends "
                        "the run without a checkpoint")
            return False
        self._pid = os.getpid()
        for sig in caught_signals():  # SIGTERM, SIGUSR1, and submitit's signal inside a submitit job
            previous = signal.signal(sig, self._handle)
            # The start-up catcher (launch/signals.py catch_early) is no handler to go back to: the default is.
            self._previous[sig] = signal.SIG_DFL if is_early_handler(previous) else previous
        early = early_signal()
        if early is not None and self.received is None:
            # Caught while the worker started (loading the model, scanning data): stop at the first step, with a
            # checkpoint; the same signal again now acts as a second one.
            self.received = early
            signal.signal(getattr(signal, early), self._previous.get(getattr(signal, early), signal.SIG_DFL))
        # Ctrl-C too, where it would raise KeyboardInterrupt (not where SIGINT is ignored or left to the default):
        # the first saves at the next step like SIGTERM, a second stops at once.
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
        return True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler_after_stop(sig, handler, self.received))
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        # Keep the handler tiny (no logging: it may interrupt a log call holding the lock). A second signal
        # gets the previous handler back: the default one terminates the process.
        if os.getpid() != self._pid:
            # A forked child (a data-scan pool worker) inherited this handler: it must end as it would without
            # us, or Pool.terminate()'s SIGTERM never stops it and the training process waits forever.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT:
            if self.received is not None:  # Ctrl-C while waiting for the step to end: the user means now
                stop_now(signum)
            self.received = self.received or "SIGINT"
            return
        self.received = self.received or signal.Signals(signum).name  # the first one is what stopped the run
        previous = self._previous.get(signum, signal.SIG_DFL)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    # -- Trainer events -----------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if self._previous:
            log.info("preemption: SIGTERM or SIGUSR1 saves a checkpoint at the next step and exits with status %d "
                     "(re-run the same command to resume)%s", PREEMPTED_EXIT_CODE,
                     "; so does Ctrl-C (press it again to stop at once)" if signal.SIGINT in self._previous else "")
            extra = [signal.Signals(s).name for s in self._previous if s not in SIGNALS and s != signal.SIGINT]
            if extra:
                log.info("preemption: %s too (submitit's; its own handler runs once the checkpoint is saved)",
                         ", ".join(extra))

    def _agreed(self) -> bool:
        """Whether any rank caught a signal (every rank gets the same answer)."""
        local = self.received is not None
        acc = self.accelerator
        if acc is None or acc.num_processes <= 1:
            return local
        import torch

        flag = torch.tensor([1.0 if local else 0.0], device=acc.device)
        return bool(acc.reduce(flag, reduction="sum").item() > 0)

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_done += 1
        if self.stopped_by is None and self._agreed():
            self.stopped_by = self.received or "a signal on another rank"
            log.warning("preemption: %s received; saving a checkpoint at step %d and stopping",
                        self.stopped_by, state.global_step)
            control.should_save = True
            control.should_training_stop = True
        return control
