"""The training console: a progress bar and one readable line per log step, and the last step always logged.

The Trainer's own ProgressCallback prints every log as a Python dict of ~15 numbers formatted as strings
(`{'loss': '6.542', 'grad_norm': '6.685', ...}`); every number still goes to the trackers, train.log's
metrics.json and `trainer_state.json` unchanged, the console gets the few a person reads:

    step 10/144  loss 2.3456  lr 2.00e-03  grad 0.81  8,691 tok/s  mem 1.1 GB  (epoch 0.21)
    eval at step 50: loss 1.9876 (64 samples, 0.2 s)

The bar is created at the first step, not at train begin, so the lines logged when training begins (the
preemption and MFU notes) are never glued to it. `LogLastStep` makes the final step a log step: with
max_steps < logging_steps the Trainer would log step 1 only, and a run's loss curve, best loss and the sweep
report would end there.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import IntervalStrategy


def _g(value: Any, spec: str) -> str | None:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def format_log(logs: dict[str, Any], step: int, max_steps: int) -> str | None:
    """One console line for a Trainer log; None for the end-of-training totals (the job prints its summary)."""
    if "train_runtime" in logs:
        return None
    if "eval_loss" in logs:
        extra = [f"{n} samples" for n in [logs.get("eval_samples")] if n is not None]
        extra += [f"{s} s" for s in [_g(logs.get("eval_runtime"), ".1f")] if s is not None]
        metrics = [f"{k[5:]} {_g(v, '.4g')}" for k, v in logs.items()
                   if k.startswith("eval_") and k not in ("eval_loss", "eval_samples", "eval_runtime")
                   and "per_second" not in k and _g(v, ".4g") is not None]
        more = f", {', '.join(metrics)}" if metrics else ""
        return f"eval at step {step}: loss {_g(logs['eval_loss'], '.4f')}{more} ({', '.join(extra)})"
    parts = [f"step {step}/{max_steps}"]
    for key, label, spec in (("loss", "loss", ".4f"), ("learning_rate", "lr", ".2e"), ("grad_norm", "grad", ".3g")):
        text = _g(logs.get(key), spec)
        if text is not None:
            parts.append(f"{label} {text}")
    # objective dpo|mpo (train/recipe/preference_step.py): the reward accuracy and margin, and δ.
    for key, label, spec in (("rewards/accuracies", "reward acc", ".2f"), ("rewards/margins", "margin", ".3g"),
                             ("delta", "δ", ".3g")):
        if (text := _g(logs.get(key), spec)) is not None:
            parts.append(f"{label} {text}")
    if (tps := _g(logs.get("tokens_per_s"), ",.0f")) is not None:
        parts.append(f"{tps} tok/s")
    if (mfu := logs.get("mfu")) is not None and _g(mfu, ".1%") is not None:
        parts.append(f"MFU {mfu:.1%}")
    if (mem := _g(logs.get("peak_mem_gb"), ".1f")) is not None:
        parts.append(f"mem {mem} GB")
    if (epoch := _g(logs.get("epoch"), ".2f")) is not None:
        parts.append(f"(epoch {epoch})")
    return "  ".join(parts)


class _AboveTheBar:
    """A console stream for logging while a bar is drawn: each record is written above the bar (tqdm.write)
    instead of being glued to it. The handler keeps its formatter and filters (the secret scrubbing)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text.rstrip("\n"), file=self.stream)

    def flush(self) -> None:
        self.stream.flush()


def _console_handlers() -> list[logging.StreamHandler]:
    return [h for h in logging.getLogger().handlers
            if type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)]


class ConsoleProgress(ProgressCallback):
    """HF's progress bars, with `format_log` lines instead of dicts, the bar started at the first step, and log
    records written above it."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.training_bar = None
        self.current_step = 0
        self._redirected: list[tuple[logging.StreamHandler, Any]] = []

    def on_step_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.training_bar is None:
            super().on_train_begin(args, state, control, **kwargs)  # the bar, now that the begin notes are out
            self.current_step = state.global_step  # a resumed run's bar starts where it left off
            self.training_bar.update(state.global_step)
            for handler in _console_handlers():
                self._redirected.append((handler, handler.setStream(_AboveTheBar(handler.stream))))

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)
        for handler, stream in self._redirected:
            handler.setStream(stream)
        self._redirected.clear()

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        line = format_log(logs, state.global_step, state.max_steps)
        if line is None:
            return
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            print(line, flush=True)


class LogLastStep(TrainerCallback):
    """Make the run's last optimizer step a log step (the Trainer logs only every logging_steps)."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.logging_strategy == IntervalStrategy.STEPS and state.global_step >= state.max_steps > 0:
            control.should_log = True
        return control


def install_console(trainer: Any) -> None:
    """Replace the Trainer's console printer (bar or dicts) with ConsoleProgress; always log the last step.
    transformers' own bars ("Writing model shards" at every save) go: the training bar is the one that counts."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    had_bar = any(isinstance(c, ProgressCallback) for c in trainer.callback_handler.callbacks)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ConsoleProgress() if had_bar else _Lines())
    trainer.add_callback(LogLastStep())


class _Lines(TrainerCallback):
    """disable_tqdm: the same lines, no bar."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            line = format_log(logs, state.global_step, state.max_steps)
            if line is not None:
                print(line, flush=True)
