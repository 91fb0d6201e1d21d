"""Shared by the freeze / optimizer / drop-path tests: build the tiny model the way run.py does and train it
for a few real steps with the real InternVLTrainer (no mocks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from conftest import compose

# Real optimizer steps with a visible lr at step 1 (no warmup), logged every step, nothing saved.
QUICK = [
    "trainer.max_steps=2",
    "trainer.per_device_train_batch_size=2",
    "trainer.logging_steps=1",
    "trainer.save_strategy=no",
    "optimizer.warmup_ratio=0.0",
    "optimizer.lr=1e-2",
    "trainer.eval_strategy=no",  # these Trainers get no eval set (data=demo has one)
]


def quick_cfg(overrides: list[str], tmp_path: Path, demo_dir: Path):
    from internvl_exp.config.validate import validate

    cfg = compose(QUICK + overrides, tmp_path, demo_dir)
    validate(cfg)
    return cfg


def build(cfg: Any, tokenizer: Any):
    """(family, setup) with setup.model ready to train: seeded tiny model + make_trainable."""
    from transformers import set_seed

    from internvl_exp.models.loading import load_model
    from internvl_exp.models.registry import get_family
    from internvl_exp.train.tuning.trainable import make_trainable

    set_seed(cfg.seed)
    family = get_family(cfg.model.family)
    model = load_model(cfg.model, tokenizer)
    return family, make_trainable(model, family, cfg.freeze, cfg.model)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train(cfg: Any, model: torch.nn.Module, family: Any, dataset: Any, tokenizer: Any, tmp_path: Path):
    """A real InternVLTrainer run of cfg.trainer.max_steps steps (no tqdm); returns the trainer."""
    from internvl_exp.data.collator import Collator
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.args import training_arguments
    from internvl_exp.train.recipe.trainer import InternVLTrainer

    args = training_arguments(cfg, RunDir(tmp_path / "run"))
    args.disable_tqdm = True
    trainer = InternVLTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=Collator(pad_token_id=tokenizer.pad_token_id),
        family=family,
        optimizer_config=cfg.optimizer,
    )
    trainer.train()
    return trainer


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
