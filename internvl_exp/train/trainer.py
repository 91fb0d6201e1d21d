"""The HF Trainer with our optimizer parameter groups and scheduler kwargs.

Both hooks are also reached under DeepSpeed: with no `optimizer` / `scheduler` block in the DS config, HF's
`deepspeed_optim_sched` calls `create_optimizer`, and the scheduler is built by `create_scheduler`.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from internvl_exp.models.registry import Family
from internvl_exp.train.optim import build_optimizer
from internvl_exp.train.schedule import scheduler_kwargs


class InternVLTrainer(Trainer):
    def __init__(self, *args: Any, family: Family, optimizer_config: Any, **kwargs: Any):
        self.family = family
        self.optimizer_config = optimizer_config
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: Any = None):
        if self.optimizer is None:
            target = model if model is not None else self.model
            self.optimizer = build_optimizer(target, self.family, self.optimizer_config)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None):
        # The kwargs depend on the step count (e.g. WSD's decay steps), known only now; writing them into args
        # also records them in training_args.bin.
        if self.lr_scheduler is None:
            self.args.lr_scheduler_kwargs = scheduler_kwargs(self.optimizer_config, num_training_steps)
        return super().create_scheduler(num_training_steps, optimizer)

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any):
        # Callbacks never see the batch; those that count it (throughput: train/callbacks.py) get it here.
        for callback in self.callback_handler.callbacks:
            observe = getattr(callback, "observe_batch", None)
            if observe is not None:
                observe(inputs)
        loss = super().training_step(model, inputs, *args, **kwargs)
        # The per-step loss for the summary numbers (train/loss_summary.py), on the device (no sync).
        for callback in self.callback_handler.callbacks:
            observe_loss = getattr(callback, "observe_loss", None)
            if observe_loss is not None:
                observe_loss(self.state.global_step, loss)
        return loss
