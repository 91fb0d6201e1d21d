"""Experiment loggers beyond the console: TensorBoard event files and WandB runs named from config.

logger=none         nothing beyond the console, train.log and metrics.json
logger=tensorboard  event files in <run_dir>/tensorboard (HF's TensorBoardCallback, pointed there by
                    TENSORBOARD_LOGGING_DIR for the duration of the run)
logger=wandb        one wandb run per job, in <run_dir>/wandb/: project/entity/job_type/mode/tags from
                    logger.wandb, group = logger.wandb.group or the sweep (the experiment for single runs),
                    name = the run's name; config = the resolved config exactly as in config.yaml; every
                    Trainer log (loss, lr, grad norm, throughput) under train/; parameter counts per part in
                    the summary. Always finished (wandb.finish), also when the run fails.

A resumed run (the same run directory, train/checkpointing/resume.py) continues the same wandb run: its id is kept in
<run_dir>/wandb_run.json, written by the main process when the run first starts, and passed to wandb.init with
resume="allow"; online the dashboard shows one run, offline every attempt's folder carries the id (`wandb sync`
uploads them into that one run).

We log to wandb with our own small callback instead of transformers' WandbCallback, which would merge all
TrainingArguments and the model config into the run's config (overwriting e.g. our `deepspeed` and `seed`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from transformers import TrainerCallback

from internvl_exp.config.schema import Config
from internvl_exp.dist import is_main_process
from internvl_exp.outputs import RunDir, write_json_atomic
from internvl_exp.redact import ScrubbedStream, scrub_value


def wandb_tags(cfg: Config) -> list[str]:
    """The configured tags plus one per chosen group option (model, data, freeze, deepspeed)."""
    chosen = [f"{group}:{cfg[group].name}" for group in ("model", "data", "freeze", "deepspeed")]
    return list(dict.fromkeys([*map(str, cfg.logger.wandb.tags), *chosen]))


def wandb_group(cfg: Config) -> str:
    return str(cfg.logger.wandb.group or cfg.sweep_name or cfg.experiment_name)


@contextlib.contextmanager
def experiment_logger(cfg: Config, run_dir: RunDir, resolved: dict[str, Any], is_main: bool = True) -> Iterator[None]:
    """Set up the configured logger for the duration of a run; always closes it (wandb.finish).

    `resolved` is the config as saved in config.yaml (resolved, scrubbed): it becomes the wandb run's config.
    """
    if cfg.logger.name == "tensorboard":
        previous = os.environ.get("TENSORBOARD_LOGGING_DIR")
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir.tensorboard)
        try:
            yield
        finally:  # do not leak into the next in-process job of a sweep
            if previous is None:
                os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
            else:
                os.environ["TENSORBOARD_LOGGING_DIR"] = previous
        return
    if cfg.logger.name != "wandb" or not is_main:
        yield
        return
    import wandb

    w = cfg.logger.wandb  # logger.wandb.mode is checked by config.validate
    run_id = wandb_run_id(run_dir)
    # wandb is only ever given scrubbed values (its background process writes them whenever it likes, online
    # mode uploads them at once). Its own metadata (command line, git remote, host) is off: provenance/ has it.
    run = wandb.init(
        project=scrub_value(w.project),
        entity=scrub_value(w.entity),
        group=scrub_value(wandb_group(cfg)),
        name=scrub_value(str(cfg.run_name)),
        tags=scrub_value(wandb_tags(cfg)),
        job_type=scrub_value(w.job_type),
        mode=w.mode,
        dir=str(run_dir.root),
        config=scrub_value(resolved),
        id=run_id,
        resume="allow",  # the id's run continues when it exists (a resumed run), else it is created
        reinit="finish_previous",
        settings=wandb.Settings(x_disable_meta=True, disable_git=True, save_code=False),
    )
    try:
        with scrubbed_console():
            yield
    except BaseException:
        run.finish(exit_code=1)
        raise
    else:
        run.finish()


WANDB_ID_FILE = "wandb_run.json"


def wandb_run_id(run_dir: RunDir) -> str:
    """This run directory's wandb run id: the one an earlier attempt recorded, else a new one, recorded now
    (main process only: the caller). Every resume of the run then logs into the same wandb run."""
    import json
    import secrets

    path = run_dir.root / WANDB_ID_FILE
    try:
        return str(json.loads(path.read_text())["id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    run_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
    write_json_atomic(path, {"id": run_id})
    return run_id


@contextlib.contextmanager
def scrubbed_console() -> Iterator[None]:
    """sys.stdout / sys.stderr scrubbed of secrets for the duration. Installed after wandb.init, outside the
    write methods wandb's console capture has wrapped, so the console it records (output.log, the .wandb
    file) is scrubbed before wandb sees it, whichever library printed."""
    import sys

    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbedStream(old[0]), ScrubbedStream(old[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old


def log_parameter_counts(params: dict[str, dict[str, int]]) -> None:
    """Parameter counts per part (total / trainable) into the active wandb run's summary, if any."""
    import sys

    wandb = sys.modules.get("wandb")  # only when a wandb run was started (never import it for nothing)
    if wandb is None or wandb.run is None:
        return
    for part, row in params.items():
        for kind, n in row.items():
            wandb.run.summary[f"parameters/{part}/{kind}"] = n


class WandbLogCallback(TrainerCallback):
    """Every Trainer log into the active wandb run (numbers only, `train/` prefix) at the Trainer's step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        import wandb

        if not is_main_process() or wandb.run is None or not logs:
            return
        # eval_loss -> eval/loss (as HF's own trackers name it; eval_rewards/chosen -> eval/rewards/chosen), keys
        # with their own section (rewards/chosen) as they are, the rest under train/
        row = {(f"eval/{k[5:]}" if k.startswith("eval_") else k if "/" in k else f"train/{k}"): v
               for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        row["train/global_step"] = state.global_step
        wandb.run.log(row, step=state.global_step)


def logger_callbacks(cfg: Config) -> list[TrainerCallback]:
    """Trainer callbacks the configured logger needs (TensorBoard's comes with TrainingArguments.report_to)."""
    return [WandbLogCallback()] if cfg.logger.name == "wandb" else []
