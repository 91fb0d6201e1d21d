"""Will it fit, and how long will it take? Per-GPU memory and time of a run, before launching it.

    python -m internvl_exp.tools.plan model=internvl2_8b deepspeed=zero2 freeze=vision \\
        trainer.per_device_train_batch_size=4 distributed.nproc_per_node=8

Takes the same overrides as launch.py, builds the preset on the meta device (no GPU, no weights), applies the
run's freeze/LoRA to it and prints the per-GPU table of internvl_exp/train/planning/memory_plan.py (the model it uses is
in that module's docstring). Exit status 0 when it fits (or the device memory is unknown), 1 when it does
not, 2 on a config error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from internvl_exp.errors import UserError
from internvl_exp.launch.precheck import compose_config
from internvl_exp.train.planning.memory_plan import format_plan, plan_memory
from internvl_exp.train.planning.meta_worker import MetaWorker

ROOT = Path(__file__).resolve().parents[2]

EPILOG = """\
overrides: any `key=value` or `group=option` that launch.py accepts, e.g.
  model=internvl2_8b deepspeed=zero3 freeze=lora_llm trainer.per_device_train_batch_size=2
  trainer.activation_checkpointing=true trainer.bf16=true data.max_seq_length=4096
  distributed.nproc_per_node=8 distributed.nnodes=2  trainer.device_memory_gb=80

exit status: 0 fits (or device memory unknown), 1 does not fit, 2 invalid config.
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m internvl_exp.tools.plan",
        description="Per-GPU memory (weights, gradients, optimizer state, activations), a fits/does-not-fit verdict "
                    "with the largest per-device batch that fits, and step/run time at an assumed MFU.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for launch.py")
    p.add_argument("--gpu", metavar="NAME", help="plan for this device (e.g. H200, A100 40GB) instead of the detected/assumed one")
    p.add_argument("--samples", type=int, metavar="N", help="samples per epoch, for the run-time estimate")
    p.add_argument("--seq-len", type=int, metavar="T", help="tokens per row instead of data.max_seq_length")
    p.add_argument("--tiles", type=int, metavar="K", help="tiles per sample instead of max_dynamic_patch (+ thumbnail)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the plan as JSON")
    p.add_argument("--config-dir", type=Path, default=ROOT / "conf", help="config tree to compose from")
    return p.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    worker = MetaWorker()  # imports torch and transformers while the config composes (a first plan)
    try:
        return _plan(args, worker)
    finally:
        worker.close()


def _plan(args: argparse.Namespace, worker) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_config(args.overrides, args.config_dir)

        plan = plan_memory(cfg, gpu=args.gpu, seq_len=args.seq_len, tiles=args.tiles, samples=args.samples,
                           build=worker.summary)
    except (UserError, HydraException, OmegaConfBaseException) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(format_plan(plan), end="")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(plan.as_dict(), indent=2) + "\n")
    return 1 if plan.fits is False else 0


if __name__ == "__main__":
    from internvl_exp.shutdown import skip_final_collection

    skip_final_collection()
    sys.exit(main())
