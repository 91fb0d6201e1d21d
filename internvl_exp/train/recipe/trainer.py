"""The HF Trainer with our optimizer parameter groups and scheduler kwargs.

Both hooks are also reached under DeepSpeed: with no `optimizer` / `scheduler` block in the DS config, HF's
`deepspeed_optim_sched` calls `create_optimizer`, and the scheduler is built by `create_scheduler`.

Checkpoints are saved into checkpoints/.partial/, marked complete after every rank has saved and then renamed
into place (train/checkpointing/checkpoints.py); retention runs after that.
"""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer

from internvl_exp.data.sampling import PlanLengthGroupedSampler
from internvl_exp.dist import is_main_process
from internvl_exp.models.registry import Family
from internvl_exp.train.checkpointing import checkpoints
from internvl_exp.train.recipe.chunked_loss import model_loss_sum
from internvl_exp.train.recipe.evaluation import eval_loss_sums, generation_scores
from internvl_exp.train.recipe.loss import LOSS_KEYS, step_weight, weighted_token_loss
from internvl_exp.train.tuning.optim import build_optimizer
from internvl_exp.train.tuning.schedule import scheduler_kwargs


class InternVLTrainer(Trainer):
    # Read by Trainer.training_step after compute_loss: True when our weighted loss (train/recipe/loss.py) already
    # normalised by the whole step; None (HF's own detection) for a batch without loss weights.
    _loss_scaled: bool | None = None
    _staging_dir: str | None = None  # set while a checkpoint is being saved

    @property
    def loss_is_scaled_for_ga(self) -> bool | None:  # type: ignore[override]
        return self._loss_scaled

    def __init__(self, *args: Any, family: Family, optimizer_config: Any, group_by_length: bool = False,
                 eval_collator: Any = None, eval_generate_samples: int = 0, template: str | None = None,
                 chunked_loss: bool = False, preference: Any = None, **kwargs: Any):
        self.family = family
        # The loss from the hidden states and the head, chunk by chunk, never the full logits (train/recipe/chunked_loss.py).
        self.chunked_loss = chunked_loss
        self.optimizer_config = optimizer_config
        self.group_by_length = group_by_length
        self.eval_collator = eval_collator  # padded batches with loss weights (train/recipe/evaluation.py)
        self.eval_generate_samples = eval_generate_samples
        self.template = template
        # objective dpo|mpo: the pair loss, its metrics and δ (train/recipe/preference_step.py); None for sft.
        self.preference = preference
        super().__init__(*args, **kwargs)
        self._marked_step: int | None = None
        self.evaluated_step: int | None = None

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"):
        """The eval loss over the whole eval set on every rank, reduced exactly (train/recipe/evaluation.py), plus
        generation scores when asked; logged (console, trackers, log_history) like HF's evaluate."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        started = time.perf_counter()
        if self.preference is not None:  # held-out pairs: rewards, accuracies, each loss term
            metrics = self.preference.evaluate(self, dataset, self.args.per_device_eval_batch_size, metric_key_prefix)
        else:
            total, weight, samples = eval_loss_sums(self, dataset, self.eval_collator,
                                                    self.args.per_device_eval_batch_size).tolist()
            metrics = {f"{metric_key_prefix}_loss": total / weight if weight else float("nan"),
                       f"{metric_key_prefix}_samples": int(samples)}
        if self.eval_generate_samples:
            scores = generation_scores(self, dataset, self.eval_generate_samples, self.template)
            metrics.update({f"{metric_key_prefix}_{k}": v for k, v in scores.items()})
        seconds = time.perf_counter() - started
        metrics[f"{metric_key_prefix}_runtime"] = round(seconds, 4)
        for callback in self.callback_handler.callbacks:  # eval time is not training time (throughput, MFU)
            exclude = getattr(callback, "exclude_seconds", None)
            if exclude is not None:
                exclude(seconds)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self.evaluated_step = self.state.global_step
        return metrics

    def _get_train_sampler(self, train_dataset: Any = None):
        if self.group_by_length:
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return PlanLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps, dataset)
        return super()._get_train_sampler(train_dataset)

    def _get_num_items_in_batch(self, batch_samples: list, device: Any):
        # The step's denominator: summed loss weights of its micro-batches on every rank (train/recipe/loss.py).
        if batch_samples and "loss_weight" in batch_samples[0]:
            return step_weight(batch_samples, device, self.accelerator, self.args.world_size)
        return super()._get_num_items_in_batch(batch_samples, device)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        self._loss_scaled = None
        if self.preference is not None:  # a mean over the micro-batch's pairs: the Trainer divides by accumulation
            self._loss_scaled = False
            loss = self.preference.loss(model, self.accelerator.unwrap_model(model), inputs)
            return (loss, None) if return_outputs else loss
        if "loss_weight" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        weight = inputs.pop("loss_weight")
        for key in LOSS_KEYS:
            inputs.pop(key, None)
        labels = inputs.pop("labels")
        total, outputs = self.loss_sum(model, inputs, labels, weight)
        if num_items_in_batch is None:  # evaluation: this batch alone
            loss = total / weight[:, 1:].sum().clamp_min(1e-12).to(total.device)
        else:
            loss = total / torch.as_tensor(num_items_in_batch, device=total.device).to(total.dtype).clamp_min(1e-12)
            self._loss_scaled = True
            if self.args.world_size > 1:  # DDP/DeepSpeed average gradients over ranks
                loss = loss * self.args.world_size
        return (loss, outputs) if return_outputs else loss

    def loss_sum(self, model: Any, inputs: dict[str, Any], labels: Any, weight: Any) -> tuple[Any, Any]:
        """(sum_t w_t * CE_t, the model's outputs) of one batch (train/recipe/loss.py); chunked: no logits in the outputs."""
        if self.chunked_loss:
            return model_loss_sum(model, self.accelerator.unwrap_model(model), inputs, labels, weight)
        outputs = model(**inputs, use_cache=False)  # a live cache would silently skip the packed mask
        return weighted_token_loss(outputs.logits, labels, weight), outputs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A training log (every rank logs at the same step): the preference metrics since the last one, averaged
        # over micro-batches and ranks.
        if self.preference is not None and "loss" in logs:
            logs = {**logs, **self.preference.pop_metrics(self.accelerator, self.args.world_size)}
        super().log(logs, start_time)

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
        # Callbacks never see the batch; those that count it (throughput: train/recipe/callbacks.py) get it here.
        for callback in self.callback_handler.callbacks:
            observe = getattr(callback, "observe_batch", None)
            if observe is not None:
                observe(inputs)
        loss = super().training_step(model, inputs, *args, **kwargs)
        # The per-step loss for the summary numbers (train/reporting/loss_summary.py), on the device (no sync).
        for callback in self.callback_handler.callbacks:
            observe_loss = getattr(callback, "observe_loss", None)
            if observe_loss is not None:
                observe_loss(self.state.global_step, loss)
        return loss

    def _run_epoch(self, *args: Any, epoch: int, **kwargs: Any):
        # The dataset's per-epoch draws (augmentation, video frames: data/dataset.py set_epoch) follow the epoch
        # being trained. The Trainer's own set_epoch does not reach the dataset when it resumes mid-epoch
        # (accelerate's skip_first_batches loader has no set_epoch), so a resumed epoch > 0 would redraw
        # epoch 0's augmentations.
        if self.state.global_step >= self.state.max_steps:
            # Resumed from a checkpoint saved at the last step: nothing is left to train. HF checks the step
            # count only after a step, so it would train one more (13 of 12).
            self.control.should_training_stop = True
            return None
        set_epoch = getattr(self.train_dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        return super()._run_epoch(*args, epoch=epoch, **kwargs)

    def restore_run_summary(self, checkpoint: Path | str | None) -> None:
        """Give the callbacks that summarise the run what the checkpoint's earlier attempts measured."""
        if checkpoint is None:
            return
        saved = checkpoints.read_extras(Path(checkpoint))
        for cb in self.callback_handler.callbacks:
            state = saved.get(type(cb).__name__)
            if state is not None and hasattr(cb, "load_checkpoint_state"):
                cb.load_checkpoint_state(state)

    def _manifest(self, folder: Path) -> dict[str, Any]:
        """Sizes and checksums of the checkpoint's files, each rank hashing its share (rank 0's listing), merged
        on every rank: a large checkpoint is read in parallel by all processes."""
        world, rank = self.args.world_size, self.args.process_index
        if world <= 1 or not torch.distributed.is_initialized():
            return checkpoints.manifest(folder)
        names = [checkpoints.file_names(folder) if rank == 0 else None]
        torch.distributed.broadcast_object_list(names, src=0)
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, checkpoints.manifest(folder, names[0][rank::world]))
        return {name: entry for part in parts for name, entry in part.items()}

    def _get_output_dir(self, trial: Any) -> str:
        # While a checkpoint is saved, HF writes it under checkpoints/.partial/ (see _save_checkpoint).
        return self._staging_dir if self._staging_dir is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        step = self.state.global_step
        if step == self._marked_step:  # e.g. a preemption stop followed by the epoch-end save: already complete
            return
        final = Path(self._get_output_dir(trial=trial)) / f"{checkpoints.PREFIX}-{step}"
        # Saved into checkpoints/.partial/checkpoint-N, marked complete there and renamed into place: a
        # checkpoint-N folder only ever appears whole. What an interrupted save left there is removed first.
        staging_root = final.parent / checkpoints.STAGING
        folder = staging_root / final.name
        if is_main_process() and staging_root.exists():
            shutil.rmtree(staging_root)
        self.accelerator.wait_for_everyone()
        # HF rotates inside _save_checkpoint (it would count a half-saved folder as the newest and could delete
        # the last complete one): rotation is ours, after the marker.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        # Checkpoint weights keep the model's own parameter names: transformers 5 saves InternVL in the original
        # (legacy) key layout by default, which the Trainer's resume (a plain load_state_dict, non-strict) does
        # not map back, so the resumed model would silently keep its initial weights. final/ keeps the default.
        target = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        own_names = isinstance(target, PreTrainedModel)
        if own_names:
            target.save_pretrained = functools.partial(type(target).save_pretrained, target, save_original_format=False)
        with checkpoints.save_errors(final, f"checkpoint {final.name}"):
            self._staging_dir = str(staging_root)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_dir = None
                self.args.save_total_limit = limit
                if own_names:
                    del target.save_pretrained
            # The whole run's summaries (loss windows, throughput totals), so a resume reports the whole run;
            # every rank takes part (the losses are averaged across ranks).
            summary = {type(cb).__name__: cb.checkpoint_state(self.accelerator)
                       for cb in self.callback_handler.callbacks if hasattr(cb, "checkpoint_state")}
            deltas = (self.preference.gather_delta(self.accelerator, self.args.world_size)
                      if self.preference is not None else None)
            if is_main_process():
                checkpoints.write_extras(folder, summary, final.parent.parent / "config.yaml")
                if deltas is not None:  # δ, so that a resume continues it
                    self.preference.save(folder, deltas)
            self.accelerator.wait_for_everyone()  # every rank's shards and RNG state are on disk
            files = self._manifest(folder)
            if is_main_process():
                checkpoints.write_marker(folder, {"global_step": step, "epoch": self.state.epoch,
                                                  "world_size": self.args.world_size, "saved_at": time.time()},
                                         files=files)
                checkpoints.move_into_place(folder, final)
        self.accelerator.wait_for_everyone()
        if self.state.best_global_step == step:  # HF looked for it under its final name before the rename
            self.state.best_model_checkpoint = str(final)
        if is_main_process():
            checkpoints.retain(final.parent, limit, protect=[self.state.best_model_checkpoint])
        self.accelerator.wait_for_everyone()
        self._marked_step = step
