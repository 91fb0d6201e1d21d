"""One training run, in order: tokenizer/processor -> model -> freeze -> data -> optimizer groups ->
TrainingArguments -> Trainer -> train -> save -> metrics.json. Returns the metrics (and so the objective)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from internvl_exp.data.collator import Collator
from internvl_exp.data.dataset import ImageSettings, build_dataset
from internvl_exp.data.sources import load_entries
from internvl_exp.models.loading import build_processor, load_model, load_tokenizer, model_tokens_per_tile
from internvl_exp.models.registry import get_family
from internvl_exp.outputs import RunDir, write_json_atomic
from internvl_exp.train.args import training_arguments
from internvl_exp.train.freeze import apply_freeze, parameter_report
from internvl_exp.train.trainer import InternVLTrainer

log = logging.getLogger(__name__)


def prepare_data(cfg: Any, tokenizer: Any, num_tokens_per_tile: int):
    """Generate demo data if asked, then scan and plan every sample (fails before training on bad data)."""
    if cfg.data.generate_demo:
        from internvl_exp.data.demo import generate_demo_data

        generate_demo_data(cfg.paths.demo_data_dir)
    inline = OmegaConf.to_container(cfg.data.datasets, resolve=True) if cfg.data.datasets else None
    entries = load_entries(cfg.data.meta_path, inline)
    settings = ImageSettings(
        tile_size=cfg.model.image_size,
        tokens_per_tile=num_tokens_per_tile,
        min_dynamic_patch=cfg.model.min_dynamic_patch,
        max_dynamic_patch=cfg.model.max_dynamic_patch,
        use_thumbnail=cfg.model.use_thumbnail,
        normalize_type=cfg.model.normalize_type,
    )
    return build_dataset(
        entries,
        tokenizer,
        cfg.model.template,
        settings,
        max_seq_length=cfg.data.max_seq_length,
        length_policy=cfg.data.length_policy,
        on_error=cfg.data.on_error,
        system_message=cfg.data.system_message,
        seed=cfg.data.seed,
    )


def _losses(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in log_history if "loss" in h and "train_runtime" not in h]


def run(cfg: Any, run_dir: RunDir) -> dict[str, Any]:
    from transformers import set_seed

    started = time.time()
    set_seed(cfg.seed)
    family = get_family(cfg.model.family)

    tokenizer = load_tokenizer(cfg.model)
    args = training_arguments(cfg, run_dir)  # before the model: ZeRO-3 must see it at construction
    model = load_model(cfg.model, tokenizer)
    num_tokens_per_tile = model_tokens_per_tile(model)
    processor = build_processor(cfg.model, tokenizer, num_tokens_per_tile)

    apply_freeze(model, family, dict(cfg.freeze.parts))
    params = parameter_report(model, family)
    for part, row in params.items():
        log.info("parameters %-9s total %10d  trainable %10d", part, row["total"], row["trainable"])

    dataset, data_report = prepare_data(cfg, tokenizer, num_tokens_per_tile)
    log.info("data: %d samples %s", data_report.samples, data_report.per_dataset)
    collator = Collator(pad_token_id=tokenizer.pad_token_id)

    trainer = InternVLTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
        family=family,
        optimizer_config=cfg.optimizer,
    )
    result = trainer.train()

    if cfg.trainer.save_final:
        trainer.save_model(str(run_dir.final))
        if trainer.is_world_process_zero():
            processor.save_pretrained(str(run_dir.final))

    losses = _losses(trainer.state.log_history)
    world = args.world_size
    steps = trainer.state.global_step
    metrics = {
        "status": "completed",
        "initial_loss": losses[0][1] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "best_loss": min(l for _, l in losses) if losses else None,
        "loss_history": [{"step": s, "loss": l} for s, l in losses],
        "steps": steps,
        "samples": steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
        "epochs": trainer.state.epoch,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "runtime_s": time.time() - started,
        "trainable_parameters": params,
        "data": {**data_report.as_dict(), "load_failures": collator.skipped},
        "run_dir": str(run_dir.root),
    }
    if metrics["final_loss"] is not None and not math.isfinite(metrics["final_loss"]):
        metrics["status"] = "diverged"
    if trainer.is_world_process_zero():
        write_json_atomic(run_dir.metrics, metrics)
    return metrics
