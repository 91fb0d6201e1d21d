"""Mapping our config groups onto transformers' TrainingArguments (5.x names)."""

from __future__ import annotations

import logging

import torch
from omegaconf import OmegaConf

from internvl_exp.config.schema import Config, LoggerConfig, TrainerConfig
from internvl_exp.outputs import RunDir
from internvl_exp.redact import scrub_value
from internvl_exp.train.tuning.schedule import hf_scheduler_name

log = logging.getLogger(__name__)


def use_cpu(trainer_cfg: TrainerConfig) -> bool:
    if trainer_cfg.device == "cpu":
        return True
    if trainer_cfg.device == "cuda":
        return False
    return not torch.cuda.is_available()


def report_to(logger_cfg: LoggerConfig) -> list[str]:
    # wandb is logged by our own callback (train/reporting/loggers.py), which keeps the run's config = our resolved config.
    return {"none": [], "tensorboard": ["tensorboard"], "wandb": []}.get(logger_cfg.name, [])


def training_arguments(cfg: Config, run_dir: RunDir):
    from transformers import TrainingArguments

    t, opt = cfg.trainer, cfg.optimizer
    world = cfg.resolved.world_size  # run.py checked the started processes against it
    accumulation = cfg.resolved.gradient_accumulation_steps  # from global_batch_size (config/resolve.py)
    if t.global_batch_size is not None:
        log.info("global batch %d = %d per device x %d process(es) x %d accumulation step(s)",
                 t.global_batch_size, t.per_device_train_batch_size, world, accumulation)
    ds = OmegaConf.to_container(cfg.deepspeed.config, resolve=True) if cfg.deepspeed.stage is not None else None
    # Scrubbed before TrainingArguments copies it (hf_deepspeed_config): DeepSpeed stores that copy in every
    # checkpoint's model and optimizer state files, and the pickled args carry it into training_args.bin.
    ds = scrub_value(ds)
    args = TrainingArguments(
        output_dir=str(run_dir.checkpoints),
        run_name=str(cfg.run_name),
        seed=cfg.seed,
        data_seed=cfg.data.seed,
        max_steps=-1 if t.max_steps is None else t.max_steps,  # -1: HF trains num_train_epochs
        num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=opt.lr,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.betas[0],
        adam_beta2=opt.betas[1],
        adam_epsilon=opt.eps,
        lr_scheduler_type=hf_scheduler_name(opt.scheduler),  # kwargs: InternVLTrainer.create_scheduler
        warmup_steps=opt.warmup_ratio,  # a float in [0, 1) is a ratio in transformers 5
        max_grad_norm=opt.max_grad_norm,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        # Eval data with eval_strategy=no is still evaluated once at the end (train/recipe/run.py).
        eval_strategy=t.eval_strategy,
        eval_steps=t.eval_steps,
        per_device_eval_batch_size=t.per_device_eval_batch_size or t.per_device_train_batch_size,
        dataloader_num_workers=t.dataloader_num_workers,
        bf16=t.bf16,
        use_cpu=use_cpu(t),
        activation_checkpointing=t.activation_checkpointing,
        deepspeed=ds,
        report_to=report_to(cfg.logger),
        # A stalled rank fails the collective after this long instead of hanging the job (launch/worker.py).
        ddp_timeout=int(cfg.distributed.timeout_s),
        # Every rank runs the same graph (train/recipe/same_graph.py), so DDP need not search for unused parameters
        # (the search costs a graph traversal per step and warns when it finds none); MoE experts may be unused.
        ddp_find_unused_parameters=bool(cfg.model.arch.text.num_experts),
        remove_unused_columns=False,  # our collator needs every key the dataset returns
        disable_tqdm=False,
    )
    if args.world_size != world:  # the accumulation above assumed `world` processes
        raise RuntimeError(f"the Trainer sees {args.world_size} processes but the run was resolved for {world}")
    return args
