"""The HF Trainer with our optimizer parameter groups (also reached under DeepSpeed, whose config then
carries no `optimizer` block and asks the Trainer for one)."""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from internvl_exp.models.registry import Family
from internvl_exp.train.optim import build_optimizer


class InternVLTrainer(Trainer):
    def __init__(self, *args: Any, family: Family, optimizer_config: Any, **kwargs: Any):
        self.family = family
        self.optimizer_config = optimizer_config
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: Any = None):
        if self.optimizer is None:
            self.optimizer = build_optimizer(self.model, self.family, self.optimizer_config)
        return self.optimizer
