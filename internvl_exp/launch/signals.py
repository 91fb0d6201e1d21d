"""Preemption signals in the processes between the scheduler and the workers, and handing a signal on.

The training processes (train/checkpointing/preemption.py) turn SIGTERM or SIGUSR1 into "save a complete checkpoint at the
next step, then exit 143". The processes that start them (the Hydra job for distributed=torchrun, the SLURM
task on each node for distributed=slurm, and torchrun itself) must neither die of those signals (SLURM signals
every process of a job step, and an ended parent ends the step) nor deliver them a second time (a second signal
ends a worker at once). So:

- torchrun starts with SIGTERM, SIGUSR1, SIGUSR2 and SIGINT ignored (`shield`, inherited across exec; it is
  told to handle only SIGHUP/SIGQUIT itself); the workers catch SIGTERM/SIGUSR1 first thing (`catch_early`),
  and the training loop acts on one caught during start-up at its first step (train/checkpointing/preemption.py);
  the SLURM node task does the same from the moment submitit unpickles it;
- the launching process catches them and Ctrl-C while the workers run (`hold_signals`) and forwards SIGUSR1
  (SIGINT for Ctrl-C: torch starts the workers in sessions of their own, out of the terminal's reach) to the
  workers, unless SLURM already signalled every process of this job step; the same signal again, or a second
  Ctrl-C, kills the workers and torchrun at once and ends the launcher by that signal;
- a Python handler installed before ours (submitit's checkpoint-and-requeue in the jobs it runs) is never
  dropped: it is called once the checkpoint is complete (`pass_on`), not when the signal arrives, when it
  would requeue and exit before anything was saved; the exit status it asks for is honoured (submitit's
  local executor requeues on status 144).

Standard library only (the Hydra job imports it before torch).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Iterator

log = logging.getLogger(__name__)

# What a run treats as "preempted: save and stop" (SLURM: SIGTERM on preemption/scancel, SIGUSR1 from
# `--signal=USR1@<s>` before the time limit).
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Ignored by torchrun: its default action for USR1/USR2 would end it, and it would forward SIGTERM a second time.
# SIGINT too: Ctrl-C reaches every process of the terminal's group; the workers save on the first and stop at
# once on the second (train/checkpointing/preemption.py), while torchrun would stop them at once on the first.
SHIELDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
TORCHRUN_HANDLES = "SIGHUP,SIGQUIT"  # torchrun --signals_to_handle: these still stop it and its workers


def is_submitit_handler(handler: Any) -> bool:
    """A handler bound to submitit's SignalHandler (installed by submitit in every job it runs)."""
    owner = getattr(handler, "__self__", None)
    return owner is not None and type(owner).__module__.startswith("submitit")


def submitit_signal() -> signal.Signals | None:
    """The signal submitit checkpoints and requeues on in this process (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL
    says otherwise), when this process is a submitit job; else None."""
    for sig in (signal.SIGUSR2, signal.SIGUSR1):
        if is_submitit_handler(signal.getsignal(sig)):
            return sig
    return None


def caught_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, SIGUSR1, and submitit's own signal when this process runs inside a submitit job."""
    extra = submitit_signal()
    return PREEMPTION_SIGNALS + ((extra,) if extra is not None and extra not in PREEMPTION_SIGNALS else ())


def in_slurm_step() -> bool:
    """Inside a task started by srun: SLURM delivers SIGTERM and `--signal` signals to every process of the
    step (the workers included), so they must not be forwarded again."""
    return bool(os.environ.get("SLURM_JOB_ID")) and os.environ.get("SLURM_STEP_ID", "batch") not in ("", "batch")


def shield() -> None:
    """preexec_fn for torchrun: ignore the preemption signals (the workers handle them; see the module doc).
    Should the launching process die, torchrun gets SIGHUP (Linux parent-death signal) and stops its workers,
    instead of living on unattended with SIGTERM ignored."""
    for sig in SHIELDED:
        signal.signal(sig, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGHUP))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: no parent-death signal
        pass


def unshield() -> None:
    """First thing in a worker: torchrun passed its ignored dispositions on. The preemption signals are caught
    from here on (`catch_early`: recorded, acted on once training runs), never left to their default action,
    which would end the worker during its start-up (minutes with a large model) without a checkpoint."""
    catch_early(PREEMPTION_SIGNALS)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # Python's own: KeyboardInterrupt, then ours in run()
        signal.signal(signal.SIGINT, signal.default_int_handler)


# The first preemption signal this process caught before its real handler was installed (catch_early).
_early: dict[str, Any] = {"received": None, "pid": None}


def _early_handler(signum: int, frame: Any) -> None:
    if os.getpid() != _early["pid"]:  # a forked child inherited it: end as it would without us
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    name = signal.Signals(signum).name
    if _early["received"] == name:  # the same signal twice: stop now, as once training runs
        stop_now(signum, "stopping now, during start-up")
    _early["received"] = _early["received"] or name


def catch_early(signals: tuple[signal.Signals, ...], only_default: bool = False) -> None:
    """Record the first of `signals` from now until the real handler takes over (`early_signal` tells it what
    came meanwhile). `only_default`: leave alone a signal that already has a handler (submitit's)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _early["pid"] = os.getpid()
    for sig in signals:
        if not only_default or signal.getsignal(sig) in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.signal(sig, _early_handler)


def early_signal() -> str | None:
    """The preemption signal caught during start-up (catch_early), if any, or the one the launching task
    caught and recorded for its workers (`mark_for_workers`)."""
    mine = _early["received"] if _early["pid"] == os.getpid() else None
    return mine or _read_marker()


# SLURM signals every process of the step at once: a worker still starting (between torchrun's exec and its
# first instruction its dispositions are torchrun's, SIGUSR1 ignored) would miss it. The node task, which
# catches it, leaves a note in the run directory for this attempt of the job; a worker reads it when it installs
# its handlers.
MARKER_ENV = "INTERNVL_EXP_PREEMPT_NOTE"


def mark_for_workers(path: str, attempt: str) -> None:
    """From now on a preemption signal this process catches is noted at `path` for its workers (of `attempt`:
    `<job id>.<restart count>`, so a note from an earlier attempt is never read as this one's)."""
    os.environ[MARKER_ENV] = f"{attempt}|{path}"


def _write_marker(name: str) -> None:
    spec = os.environ.get(MARKER_ENV)
    if not spec:
        return
    attempt, _, path = spec.partition("|")
    try:  # os calls only: this runs in a signal handler
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, f"{attempt} {name}\n".encode())
        os.close(fd)
    except OSError:
        pass


def _read_marker() -> str | None:
    spec = os.environ.get(MARKER_ENV)
    if not spec:
        return None
    attempt, _, path = spec.partition("|")
    try:
        with open(path) as f:
            found, _, name = f.read().strip().partition(" ")
    except OSError:
        return None
    return name if found == attempt and name.startswith("SIG") else None


def is_early_handler(handler: Any) -> bool:
    return handler is _early_handler


@dataclass
class Held:
    received: str | None = None  # the first signal this process caught while holding
    workers_of: int | None = None  # the pid whose descendants (the workers) a forwarded SIGUSR1 goes to
    forwarded: bool = False


def stop_now(signum: int, what: str = "stopping now") -> None:
    """End this process at once by `signum` (its default action), saying so first. Signal-safe: os.write only."""
    name = signal.Signals(signum).name
    os.write(2, f"\n{name} again: {what}, without a checkpoint (the last complete one, if any, is what a re-run "
                f"resumes from)\n".encode())
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def stop_now_handler(signum: int, frame: Any) -> None:
    """SIGINT's handler once a stop is under way and the run's own handlers are put back (the checkpoint saved,
    the last files still to write): Ctrl-C still means "now", in one line, not KeyboardInterrupt's traceback."""
    stop_now(signum)


def handler_after_stop(sig: int, handler: Any, received: str | None) -> Any:
    """The handler to put back for `sig` when the run's handlers are removed."""
    return stop_now_handler if sig == signal.SIGINT and received is not None else handler


def _stop_workers_now(held: Held, signum: int) -> None:
    """A second preemption signal or Ctrl-C while the workers save: kill them (and torchrun) at once, then end
    this process by the same signal, as a single process does (train/checkpointing/preemption.py)."""
    import psutil

    if held.workers_of is not None:
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(held.workers_of)
            for proc in [*parent.children(recursive=True), parent]:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
    stop_now(signum, "stopping the workers now")


def _forward(held: Held) -> None:
    import psutil  # already imported by hold_signals (never import inside a signal handler)

    if held.workers_of is None or held.forwarded:
        return
    held.forwarded = True
    try:
        children = psutil.Process(held.workers_of).children(recursive=True)
    except psutil.Error:
        return
    # Ctrl-C as itself (torch starts the workers in sessions of their own: the terminal's SIGINT never reaches
    # them), anything else as SIGUSR1 (a second SIGTERM would end them at once).
    sig = signal.SIGINT if held.received == "SIGINT" else signal.SIGUSR1
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.send_signal(sig)


@contextlib.contextmanager
def hold_signals() -> Iterator[Held]:
    """While the workers run: catch the preemption signals (and submitit's) so this process outlives the
    workers' save, and forward SIGUSR1 to them unless SLURM signalled them already. Previous handlers are put
    back on exit; call `pass_on` afterwards to run the one that was there before."""
    import psutil  # noqa: F401  (for _forward, which runs inside the handler)

    held = Held()
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: Any) -> None:
        sig = signal.Signals(signum)
        if held.received is not None and (sig == signal.SIGINT or sig.name == held.received):
            _stop_workers_now(held, signum)
        held.received = held.received or sig.name
        if not (in_slurm_step() and sig in PREEMPTION_SIGNALS):
            _forward(held)
        else:  # SLURM signalled the workers too; one still starting missed it and reads this note instead
            _write_marker(sig.name)

    if threading.current_thread() is threading.main_thread():
        for sig in caught_signals():
            previous[sig] = signal.signal(sig, handle)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Ctrl-C: save like SIGTERM
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, handle)
    # One caught before these handlers were in place (during start-up, or a moment ago: the caller's own check
    # for it came first) counts as caught here. SLURM signalled this step's processes then, before the workers
    # existed: the note is how they learn it (CI: a `scancel` 9 ms after the task's check went unseen, and the
    # run trained on until SLURM killed it).
    held.received = held.received or early_signal()
    if held.received is not None and in_slurm_step():
        _write_marker(held.received)
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler_after_stop(sig, handler, held.received))


def passes_to_submitit(signal_name: str | None) -> bool:
    """Whether the handler now installed for `signal_name` is submitit's checkpoint-and-requeue (it then
    decides about the requeue, and pass_on runs it)."""
    sig = getattr(signal, str(signal_name), None)
    return isinstance(sig, signal.Signals) and sig == submitit_signal()


def pass_on(signal_name: str | None) -> int | None:
    """Call the Python handler now installed for `signal_name` (the one that was there before ours, e.g.
    submitit's checkpoint-and-requeue) now that the checkpoint is complete. Returns the exit status it asked
    for (submitit exits after requeueing: on SLURM after `scontrol requeue`, locally the status 144 is the
    request), for the caller to exit with instead of 143; None when there was no such handler or it returned."""
    sig = getattr(signal, str(signal_name), None)  # not a signal name: "a signal on another rank"
    if not isinstance(sig, signal.Signals):
        return None
    handler = signal.getsignal(sig)
    if not callable(handler) or handler in (signal.default_int_handler, stop_now_handler) or is_early_handler(handler):
        return None  # Ctrl-C's KeyboardInterrupt or our own: nothing to pass on
    log.info("preemption: the checkpoint is saved; passing %s on to the handler installed before ours (%s)",
             signal_name, getattr(handler, "__qualname__", handler))
    try:
        handler(int(sig), None)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except Exception as e:  # e.g. submitit's "Job not requeued because: timed-out too many times"
        log.warning("preemption: the previous %s handler did not complete: %s: %s", signal_name,
                    type(e).__name__, e)
    return None
