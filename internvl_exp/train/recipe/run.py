"""One training run, read top to bottom: setup -> train -> save -> summarise. Returns the metrics (and so the
objective).

    setup       the weights on this machine, the tokenizer, the data plan (before the model: bad data fails in
                seconds), TrainingArguments (before the model: ZeRO-3 must see its construction), the resume plan,
                the model made trainable, the planner's verdict, the Trainer with its callbacks
    train       Trainer.train from the resume plan's checkpoint; the final eval
    save        final/, complete or not at all (train/checkpointing/final.py)
    summarise   metrics.json (the whole run's, across resumes)

`cfg` is the resolved run spec (config/resolve.py): nothing here writes into it."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internvl_exp.config.chunked_loss import use_chunked_loss
from internvl_exp.config.objective_rules import is_preference
from internvl_exp.config.precision import pure_half_precision
from internvl_exp.config.schema import Config
from internvl_exp.data.collator import Collator
from internvl_exp.data.eval_data import train_and_eval_data
from internvl_exp.data.packing import training_data
from internvl_exp.data.preference_data import preference_train_and_eval
from internvl_exp.dist import is_main_process, world_size
from internvl_exp.errors import ConfigError
from internvl_exp.models.loading import (
    config_tokens_per_tile,
    load_model,
    load_processor,
    load_tokenizer,
    native_checkpoint,
)
from internvl_exp.models.registry import get_family
from internvl_exp.models.resolve import weights_of
from internvl_exp.outputs import BASE_SUBDIR, RunDir, write_json_atomic
from internvl_exp.redact import scrub_fields
from internvl_exp.train.checkpointing.final import save_final
from internvl_exp.train.checkpointing.preemption import Preempted, PreemptionCallback
from internvl_exp.train.checkpointing.resume import agreed_plan
from internvl_exp.train.planning.flops import FlopsModel
from internvl_exp.train.planning.memory_plan import plan_memory
from internvl_exp.train.recipe.args import training_arguments, use_cpu
from internvl_exp.train.recipe.callbacks import ThroughputCallback, install_first, peak_host_rss_gb
from internvl_exp.train.recipe.deepspeed_env import (
    announce_op_build,
    init_before_model,
    prepare_environment,
    write_deepspeed_json,
)
from internvl_exp.train.recipe.evaluation import eval_history
from internvl_exp.train.recipe.preference_step import preference_history, preference_training
from internvl_exp.train.recipe.reference import is_precomputed, load_reference, stored_reference
from internvl_exp.train.recipe.same_graph import keep_vision_in_graph
from internvl_exp.train.recipe.trainer import InternVLTrainer
from internvl_exp.train.reporting.console_header import training_header
from internvl_exp.train.reporting.loggers import log_parameter_counts, logger_callbacks
from internvl_exp.train.reporting.loss_summary import LossWindows
from internvl_exp.train.reporting.param_report import format_report, training_report
from internvl_exp.train.reporting.progress import install_console
from internvl_exp.train.tuning.optim import parameter_groups
from internvl_exp.train.tuning.trainable import make_trainable

log = logging.getLogger(__name__)


def _losses(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in log_history if "loss" in h and "train_runtime" not in h]


@dataclass
class Recipe:
    """What setup() builds for one run and the later phases use."""

    family: Any
    checkpoint: Path | None  # the native-layout weights loaded (None: random init with the tiny tokenizer)
    processor: Any
    args: Any  # TrainingArguments
    resume: Any  # the agreed resume plan (train/checkpointing/resume.py)
    data_report: Any
    eval_report: Any
    has_eval: bool
    params: dict[str, Any]  # the parameter report (params.json)
    memory_plan: Any
    rss_before_train: float
    trainer: Any
    throughput: Any
    loss_windows: Any


def run(cfg: Config, run_dir: RunDir) -> dict[str, Any]:
    # Signals are caught from the start (a SIGTERM during the model load stops at step 1, with a checkpoint).
    preemption = PreemptionCallback()
    preemption.install()
    try:
        started = time.time()
        recipe = setup(cfg, run_dir, preemption)
        result, preempted = train(recipe, preemption)
        if cfg.trainer.save_final and not preempted:
            save_final(recipe.trainer, recipe.processor, run_dir, recipe.checkpoint)
        return summarise(cfg, run_dir, recipe, result, preemption.stopped_by if preempted else None, started)
    except Exception as e:
        e.steps_done = preemption.steps_done  # type: ignore[attr-defined]  # 0: failed before its first step
        raise
    finally:
        preemption.restore()


def setup(cfg: Config, run_dir: RunDir, preemption: PreemptionCallback) -> Recipe:
    from transformers import set_seed

    if world_size() != cfg.resolved.world_size:
        raise ConfigError(f"this run was resolved for {cfg.resolved.world_size} process(es) (distributed.nproc_per_node "
                          f"x nnodes) but {world_size()} started; launch it with the same distributed settings")
    set_seed(cfg.seed)
    family = get_family(cfg.model.family)

    # The weights on this machine (checked against the preset), converted once if in the original layout.
    weights = weights_of(cfg)
    checkpoint = native_checkpoint(weights, Path(cfg.paths.cache_dir), cfg.model.random_init)
    if cfg.model.random_init:
        log.info("model %s: random init from model.arch; tokenizer: %s", cfg.model.name, checkpoint or "tiny")
    else:
        log.info("model %s: %s-layout weights from %s (%s)%s", cfg.model.name, weights.layout, weights.path,
                 weights.origin, f", loaded from {checkpoint}" if checkpoint != weights.path else "")
    tokenizer = load_tokenizer(cfg.model, checkpoint)
    # The pre-flight data scan runs before the model loads: bad data fails in seconds, not after a 70B load.
    num_tokens_per_tile = cfg.resolved.tokens_per_tile
    preference = is_preference(cfg)  # objective dpo|mpo: pairs, a reference model, the pair loss
    if preference:
        dataset, data_report, eval_dataset, eval_report = preference_train_and_eval(cfg, tokenizer, num_tokens_per_tile)
    else:
        dataset, data_report, eval_dataset, eval_report = train_and_eval_data(cfg, tokenizer, num_tokens_per_tile)
    log.info("data: %d samples %s", data_report.samples, data_report.per_dataset)
    if eval_dataset is not None:
        log.info("eval data: %d samples %s (trainer.eval_strategy=%s)", eval_report.samples, eval_report.per_dataset,
                 cfg.trainer.eval_strategy)

    # Before the model: ZeRO-3 must see it at construction. Scrubbed: pickled into training_args.bin.
    cpu = use_cpu(cfg.trainer)
    prepare_environment(cfg, cpu)
    args = scrub_fields(training_arguments(cfg, run_dir))
    init_before_model(cfg, args, cpu)
    resume = agreed_plan(cfg.resume, run_dir.root)  # the same on every rank (rank 0's)
    log.info("run %s: %s", run_dir.root.name, resume.describe())
    if pure_half_precision(cfg):
        log.warning("training pure %s weights without fp32 master weights (trainer.pure_half_precision=true): "
                    "small updates round away", cfg.model.dtype)
    model = load_model(cfg.model, tokenizer, checkpoint)
    if config_tokens_per_tile(model.config) != num_tokens_per_tile:
        raise ConfigError(
            f"model {cfg.model.name!r} has {config_tokens_per_tile(model.config)} image tokens per tile but its config "
            f"gives {num_tokens_per_tile}; check model.image_size / model.downsample_ratio"
        )
    # The reference (objective dpo|mpo) from the starting weights, before anything changes the policy.
    reference_loaded = stored = None
    if preference:
        if is_precomputed(cfg):  # a re-run whose reference log-probs are all stored loads no reference
            stored = stored_reference(cfg, args, {"train": dataset, "eval": eval_dataset}, checkpoint,
                                      use_chunked_loss(cfg.trainer.chunked_loss, cfg.model.name))
        if stored is None:
            reference_loaded = load_reference(cfg, tokenizer, checkpoint, model)
    processor = load_processor(cfg.model, tokenizer, num_tokens_per_tile, checkpoint, cfg.data.system_message,
                               cfg.data.resize_backend)  # final/'s processor computes the training pixels

    # Drop-path, freezing, eval-mode frozen parts, LoRA. A random base exists nowhere else: saved for merge_lora.
    save_base = cfg.model.random_init and cfg.trainer.save_final and is_main_process()
    model = make_trainable(model, family, cfg.freeze, cfg.model, run_dir.final / BASE_SUBDIR if save_base else None).model
    report = training_report(model, family, parameter_groups(model, family, cfg.optimizer))
    log.info("what trains:\n%s", format_report(report))
    if is_main_process():
        run_dir.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir.root / "params.json", report)
    log_parameter_counts(report["parameters"])
    memory_plan = plan_memory(cfg, setup=(model, family), world=args.world_size, running=True,
                              samples=data_report.samples)
    rss_before_train = peak_host_rss_gb()
    log.info("%s", training_header(data_report, memory_plan))  # data size, what trains, the planner's verdict

    keep_vision_in_graph(model)  # text-only batches still run the vision path (DDP/ZeRO-3 never hang)
    # Padded or packed batches, with the per-token loss weights of data.loss_reduction (data/packing.py).
    if preference:  # pairs, collate_pairs, and the step with its frozen reference (train/recipe/preference_step.py)
        reference_loaded = [reference_loaded]  # precomputed: preference_training holds the only reference, then frees it
        train_dataset, collator, step = preference_training(cfg, args, model, dataset, tokenizer,
                                                            reference_loaded.pop(), eval_dataset, checkpoint, stored)
        del reference_loaded
    else:
        train_dataset, collator = training_data(cfg, dataset, args)
        step = None
    trainer = InternVLTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,
        family=family,
        optimizer_config=cfg.optimizer,
        group_by_length=cfg.data.group_by_length,
        eval_dataset=eval_dataset,
        eval_collator=(Collator(tokenizer.pad_token_id, cfg.data.loss_reduction)
                       if eval_dataset is not None and not preference else None),
        eval_generate_samples=cfg.trainer.eval_generate_samples,
        template=cfg.model.template,
        chunked_loss=use_chunked_loss(cfg.trainer.chunked_loss, cfg.model.name),
        preference=step,
    )
    # Throughput/MFU first, so the loggers and the console printer see the numbers it adds to each log.
    throughput = ThroughputCallback(
        FlopsModel.from_model(model, family, num_tokens_per_tile), cfg.trainer.peak_tflops, args.world_size
    )
    install_first(trainer, throughput)
    install_console(trainer)  # one readable line per log step; the last step always logged (train/reporting/progress.py)
    loss_windows = LossWindows()
    trainer.add_callback(loss_windows)
    for callback in logger_callbacks(cfg):
        trainer.add_callback(callback)
    preemption.accelerator = trainer.accelerator
    trainer.add_callback(preemption)
    write_deepspeed_json(trainer.args, run_dir.deepspeed)  # the JSON as DeepSpeed was given it
    announce_op_build(cfg, cpu)  # DeepSpeed's first CPU run compiles an op now: say so (train/recipe/deepspeed_env.py)
    trainer.restore_run_summary(resume.checkpoint)  # the summaries cover the whole run, not this attempt
    if step is not None:
        step.restore(resume.checkpoint)  # δ continues where the checkpoint left it
    return Recipe(family, checkpoint, processor, args, resume, data_report, eval_report, eval_dataset is not None,
                  report, memory_plan, rss_before_train, trainer, throughput, loss_windows)


def train(recipe: Recipe, preemption: PreemptionCallback) -> tuple[Any, bool]:
    """Trainer.train from the resume plan's checkpoint, then the final model's eval; (result, preempted)."""
    trainer = recipe.trainer
    checkpoint = recipe.resume.checkpoint
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    preempted = preemption.stopped_by is not None and trainer.state.global_step < trainer.state.max_steps
    if recipe.has_eval and not preempted and trainer.evaluated_step != trainer.state.global_step:
        trainer.evaluate()  # final_eval_loss is always the final model's (also under eval_strategy=no)
    return result, preempted


def summarise(cfg: Config, run_dir: RunDir, recipe: Recipe, result: Any, preempted_by: str | None,
              started: float) -> dict[str, Any]:
    """metrics.json (main process), returned; a preempted run raises Preempted after writing it."""
    trainer, args, throughput = recipe.trainer, recipe.args, recipe.throughput
    losses = _losses(trainer.state.log_history)
    world = args.world_size
    steps = trainer.state.global_step
    metrics = {
        "status": "completed",
        # initial/final: means over the first/last loss_window_steps steps (train/reporting/loss_summary.py);
        # train_loss: the mean over all steps; best_loss: the lowest logged window. The whole run's, across
        # resumes (the checkpoint carries them: run_summary.json).
        **recipe.loss_windows.summary(trainer.accelerator),
        "best_loss": min(l for _, l in losses) if losses else None,
        "loss_history": [{"step": s, "loss": l} for s, l in losses],
        # eval_loss history [{step, value}], best_eval_loss, final_eval_loss (train/recipe/evaluation.py)
        **eval_history(trainer.state.log_history),
        "steps": steps,
        # Packed: the samples the throughput callback counted (rank 0's times the world size).
        "samples": (throughput.summary().get("samples", 0) * world if cfg.data.packing.enabled
                    else steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world),
        "epochs": trainer.state.epoch,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "runtime_s": time.time() - started,
        "trainable_parameters": recipe.params["parameters"],
        "optimizer_groups": recipe.params["optimizer_groups"],
        "throughput": throughput.summary(),
        "memory_plan": recipe.memory_plan.as_dict(),
        "data": recipe.data_report.as_dict(all_ranks=True),  # load failures summed over the ranks
        "eval_data": recipe.eval_report.as_dict(all_ranks=True) if recipe.eval_report is not None else None,
        "run_dir": str(run_dir.root),
    }
    if trainer.preference is not None:  # per-step rewards, accuracies, loss terms, δ; train and eval

        metrics["preference"] = {**preference_history(trainer.state.log_history),
                                 "reference": trainer.preference.reference.kind,
                                 "parameters_held": trainer.preference.parameters_held}
    if recipe.resume.checkpoint is not None:
        metrics["resumed_from"] = str(recipe.resume.checkpoint)
    tp = metrics["throughput"]
    # Measured beside predicted: torch's allocator peak on a GPU; on CPU the growth of the process's peak RSS
    # during training (model and data already loaded, so it holds what training added, plus allocator slack).
    metrics["memory_plan"]["measured_peak_gb"] = tp.get("peak_gpu_memory_gb")
    if tp.get("peak_gpu_memory_gb") is None:
        metrics["memory_plan"]["measured_train_rss_growth_gb"] = peak_host_rss_gb() - recipe.rss_before_train
    if metrics["final_loss"] is not None and not math.isfinite(metrics["final_loss"]):
        metrics["status"] = "diverged"
    if preempted_by is not None:
        saved = run_dir.checkpoints / f"checkpoint-{steps}"
        metrics.update({"status": "preempted", "signal": preempted_by, "checkpoint": str(saved)})
    if is_main_process():
        write_json_atomic(run_dir.metrics, metrics)
    if preempted_by is not None:
        raise Preempted(preempted_by, str(saved), metrics)
    return metrics
