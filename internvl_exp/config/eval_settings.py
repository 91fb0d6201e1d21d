"""What a run's eval settings mean, decided from the config alone: is there eval data, when is it evaluated,
which metric does a sweep optimise. Light (no torch): config validation and the job runner use it.

- Eval data: `data.eval` (datasets of their own) or `data.eval_fraction` (a held-out share of the training
  lines, data/eval_data.py); setting both is refused, since a union would hide which lines a score is on.
- `trainer.eval_strategy`: HF's names (no | steps | epoch); null means steps when there is eval data, else no.
  Eval data with `no` is still evaluated once, at the end (a setting is never silently ignored), and
  every run with eval data evaluates its final model (final_eval_loss).
- `optimized_metric=auto`: final_eval_loss with eval data, else final_loss; an explicit key is kept.
"""

from __future__ import annotations

from typing import Any

from internvl_exp.config.schema import Config

EVAL_STRATEGIES = ("no", "steps", "epoch")
EVAL_METRICS = ("eval_loss", "best_eval_loss", "final_eval_loss", "eval_exact_match", "eval_relaxed_match")


def has_eval_datasets(data: Any) -> bool:
    return bool(data.eval.meta_path or data.eval.datasets)


def has_eval_data(cfg: Config) -> bool:
    return has_eval_datasets(cfg.data) or bool(cfg.data.eval_fraction)


def eval_strategy(cfg: Config) -> str:
    """The strategy the Trainer gets: the configured one, or (null) steps when there is eval data."""
    s = cfg.trainer.eval_strategy
    if s is None:
        return "steps" if has_eval_data(cfg) else "no"
    return str(s)


def optimized_metric(cfg: Config) -> str:
    key = str(cfg.optimized_metric)
    if key != "auto":
        return key
    return "final_eval_loss" if has_eval_data(cfg) else "final_loss"


def eval_problems(cfg: Config) -> list[str]:
    d, t, problems = cfg.data, cfg.trainer, []
    fraction = d.eval_fraction
    if not 0.0 <= fraction < 1.0:
        problems.append(f"data.eval_fraction: {fraction} must be in [0, 1) (the share of training lines held out)")
    if fraction and has_eval_datasets(d):
        problems.append("data.eval and data.eval_fraction are both set; evaluate on your eval datasets "
                        "(data.eval_fraction=0) or on a held-out share of the training data (data.eval.meta_path=null "
                        "data.eval.datasets={}), not both")
    strategy = t.eval_strategy
    if strategy is not None and strategy not in EVAL_STRATEGIES:
        problems.append(f"trainer.eval_strategy: {strategy!r} is not one of {list(EVAL_STRATEGIES)} (or null: steps "
                        "when there is eval data)")
    elif strategy in ("steps", "epoch") and not has_eval_data(cfg):
        problems.append(f"trainer.eval_strategy={strategy} but the run has no eval data; set data.eval.meta_path "
                        "(or data.eval.datasets) or data.eval_fraction, or trainer.eval_strategy=no")
    if t.eval_steps < 1:
        problems.append(f"trainer.eval_steps: {t.eval_steps} must be >= 1")
    batch = t.per_device_eval_batch_size
    if batch is not None and batch < 1:
        problems.append(f"trainer.per_device_eval_batch_size: {batch} must be >= 1 (or null: the training batch)")
    n = t.eval_generate_samples
    if n < 0:
        problems.append(f"trainer.eval_generate_samples: {n} must be >= 0")
    elif n and not has_eval_data(cfg):
        problems.append("trainer.eval_generate_samples is set but the run has no eval data; set data.eval.meta_path "
                        "or data.eval_fraction, or trainer.eval_generate_samples=0")
    metric = str(cfg.optimized_metric)
    if metric.split(".")[0] in EVAL_METRICS and not has_eval_data(cfg):
        problems.append(f"optimized_metric={metric} but the run has no eval data; set data.eval.meta_path or "
                        "data.eval_fraction, or optimized_metric=auto")
    return problems
