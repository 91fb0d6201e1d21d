"""The global batch and the world size: one place answers "how many processes?" and "how many accumulation steps?".

`trainer.global_batch_size` states the optimiser's batch once (as InternVL's scripts do with BATCH_SIZE); the
accumulation steps follow from it as global / (per-device batch x world size), and a split that does not divide
is an error, never a silently different batch (the official scripts' integer division changes it silently).

Light on purpose (imported by config validation): no torch import here.
"""

from __future__ import annotations

from internvl_exp.config.schema import TrainerConfig
from internvl_exp.errors import ConfigError

# TrainerConfig.gradient_accumulation_steps' default; any other value next to global_batch_size states the batch twice.
DEFAULT_ACCUMULATION = 1


def batch_problems(trainer_cfg: TrainerConfig, world: int) -> list[str]:
    """What is wrong with the batch settings for `world` processes (empty when they are consistent)."""
    t = trainer_cfg
    problems = []
    if t.per_device_train_batch_size < 1:
        problems.append(f"trainer.per_device_train_batch_size: {t.per_device_train_batch_size} must be >= 1")
    if t.gradient_accumulation_steps < 1:
        problems.append(f"trainer.gradient_accumulation_steps: {t.gradient_accumulation_steps} must be >= 1")
    if t.global_batch_size is None or problems:
        return problems
    if t.global_batch_size < 1:
        return [f"trainer.global_batch_size: {t.global_batch_size} must be >= 1 (or null: use gradient_accumulation_steps)"]
    if t.gradient_accumulation_steps != DEFAULT_ACCUMULATION:
        problems.append(
            f"trainer.gradient_accumulation_steps={t.gradient_accumulation_steps} and trainer.global_batch_size="
            f"{t.global_batch_size} both set the batch; state it once: leave gradient_accumulation_steps at "
            f"{DEFAULT_ACCUMULATION} (it is derived from the global batch) or set trainer.global_batch_size=null"
        )
    per_step = t.per_device_train_batch_size * world
    if t.global_batch_size % per_step:
        problems.append(
            f"trainer.global_batch_size={t.global_batch_size} is not divisible by trainer.per_device_train_batch_size="
            f"{t.per_device_train_batch_size} x {world} process(es) = {per_step}; choose a global batch that is a "
            f"multiple of {per_step}, or change the per-device batch or the number of processes"
        )
    return problems


def accumulation_steps(trainer_cfg: TrainerConfig, world: int) -> int:
    """Gradient accumulation steps for `world` processes: derived from trainer.global_batch_size when it is set,
    trainer.gradient_accumulation_steps otherwise. Raises ConfigError when the numbers do not fit."""
    problems = batch_problems(trainer_cfg, world)
    if problems:
        raise ConfigError("; ".join(problems))
    if trainer_cfg.global_batch_size is None:
        return int(trainer_cfg.gradient_accumulation_steps)
    return trainer_cfg.global_batch_size // (trainer_cfg.per_device_train_batch_size * world)
