"""The run's summary losses, measured the same way at both ends.

`initial_loss` is the mean training loss over the first K optimizer steps and `final_loss` the mean over the
last K, with K = trainer.logging_steps capped at half the run (so the two windows never overlap; a 1-step run
has K = 1 and both are that step). The per-step loss is exactly what the Trainer accumulates for its logs (the
sum of `training_step`'s returns over the step's micro-batches), averaged over processes like the Trainer's
logged loss. `train_loss` is the mean over all steps (what the Trainer's own train_loss is for a run that never
stopped), recorded next to them.

Across a resume the windows and the running sum travel in each checkpoint (`run_summary.json`, written by
InternVLTrainer): a resumed run's numbers cover the whole run, not just its last attempt.

The Trainer's logged windows cannot serve: with `logging_first_step` the first log is step 1 alone while the
last one averages up to logging_steps steps. Losses stay on the device until the run ends (no per-step sync).
Unlike the Trainer's logs, a NaN/inf step is kept (it marks the run diverged instead of being smoothed over).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from transformers import TrainerCallback


def window_size(logging_steps: float, max_steps: int) -> int:
    """K: the logging interval in steps (a ratio < 1 is a share of max_steps, as in the Trainer), capped at half
    the run."""
    interval = math.ceil(max_steps * logging_steps) if 0 < logging_steps < 1 else int(logging_steps)
    return max(1, min(max(interval, 1), max_steps // 2 if max_steps >= 2 else 1))


class LossWindows(TrainerCallback):
    def __init__(self) -> None:
        self.k = 1
        self._first: list[torch.Tensor] = []
        self._last: deque[torch.Tensor] = deque(maxlen=1)
        self._step: int | None = None
        self._current: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None  # of every closed step's loss (train_loss)
        self._count = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.k = window_size(args.logging_steps, max(int(state.max_steps), 1))
        self._last = deque(self._last, maxlen=self.k)

    def observe_loss(self, step: int, loss: torch.Tensor) -> None:
        """One micro-batch's loss (fed by InternVLTrainer.training_step); `step` = optimizer steps done before it."""
        loss = loss.detach().float()
        if step == self._step and self._current is not None:
            self._current = self._current + loss
            return
        self._close()
        self._step, self._current = step, loss

    def _close(self) -> None:
        if self._current is None:
            return
        if len(self._first) < self.k:
            self._first.append(self._current)
        self._last.append(self._current)
        self._sum = self._current if self._sum is None else self._sum + self._current.to(self._sum.device)
        self._count += 1
        self._current = None

    def _averaged(self, accelerator: Any) -> tuple[list[float], list[float], float]:
        """(first, last, sum) averaged across processes (every process calls it)."""
        device = accelerator.device if accelerator is not None else torch.device("cpu")
        parts = [t.to(device) for t in (*self._first, *self._last)]
        parts.append(self._sum.to(device) if self._sum is not None else torch.zeros((), device=device))
        values = torch.stack(parts)
        if accelerator is not None and accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="mean")
        values = values.tolist()
        n = len(self._first)
        return values[:n], values[n:-1], values[-1]

    def checkpoint_state(self, accelerator: Any = None) -> dict[str, Any]:
        """The run so far, for the checkpoint (every process calls it: the losses are averaged across them)."""
        self._close()
        first, last, total = self._averaged(accelerator)
        return {"first": first, "last": last, "sum": total, "count": self._count}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Continue the run's numbers from a checkpoint's `checkpoint_state` (before training resumes)."""
        self._first = [torch.tensor(v) for v in state["first"]]
        self._last = deque((torch.tensor(v) for v in state["last"]), maxlen=max(len(state["last"]), 1))
        self._sum, self._count = torch.tensor(state["sum"]), int(state["count"])

    def on_train_end(self, args, state, control, **kwargs):
        self._close()

    def summary(self, accelerator: Any = None) -> dict[str, Any]:
        """{"initial_loss", "final_loss", "loss_window_steps", "train_loss"}; call on every process (it averages
        across them)."""
        self._close()
        if not self._first:
            return {"initial_loss": None, "final_loss": None, "loss_window_steps": 0, "train_loss": None}
        first, last, total = self._averaged(accelerator)
        k = min(self.k, len(first))
        last = last[-k:]
        return {"initial_loss": sum(first[:k]) / k, "final_loss": sum(last) / len(last), "loss_window_steps": k,
                "train_loss": total / self._count}
