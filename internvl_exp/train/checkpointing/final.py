"""Saving final/: written into `final.partial/`, marked complete, then moved into place in one rename.

A kill or a full disk during the save leaves `final.partial/` (removed by the next attempt) and no final/,
so the run directory never looks finished while its model is half written: the same command resumes from the
newest complete checkpoint and saves final/ again. final/ carries the same marker as a checkpoint (every
file's size and checksum), which is what train/checkpointing/resume.py counts as "finished".
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from internvl_exp.dist import is_main_process
from internvl_exp.outputs import BASE_SUBDIR, RunDir
from internvl_exp.train.checkpointing.checkpoints import move_into_place, save_errors, write_marker
from internvl_exp.train.tuning.lora import record_base_model

STAGING = "final.partial"


def save_final(trainer: Any, processor: Any, run_dir: RunDir, base_checkpoint: Path | str | None) -> None:
    """Save the trained model (and processor) as run_dir/final, complete or not at all. Every rank calls it
    (ZeRO-3 gathers the weights); the main process writes the rest and renames."""
    staging = run_dir.root / STAGING
    main = is_main_process()
    with save_errors(staging, "the final model"):
        if main and staging.exists():  # left by an earlier attempt killed while saving
            shutil.rmtree(staging)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(staging))
        trainer.accelerator.wait_for_everyone()
        if not main:
            return
        processor.save_pretrained(str(staging))
        final = run_dir.final
        # A LoRA run on a random base saved it as final/base when it started: it moves along.
        base = final / BASE_SUBDIR
        if (base / "config.json").is_file():
            base.rename(staging / BASE_SUBDIR)
        # A LoRA final/ names its base by local path: final/base (random init) or the resolved checkpoint.
        record_base_model(staging, base if (staging / BASE_SUBDIR / "config.json").is_file() else base_checkpoint)
        write_marker(staging, {"global_step": trainer.state.global_step, "saved_at": time.time()})
        move_into_place(staging, final)  # replaces a partial final/ of an older version (never counted)

