"""What DeepSpeed needs around the Trainer:

- its communication layer wants RANK/WORLD_SIZE/MASTER_* (else it looks for mpi4py): a single process without
  a launcher gets a one-process env rendezvous on a free local port;
- on a machine without a GPU it must use its CPU accelerator (gloo), chosen before deepspeed is imported;
- under ZeRO-3 the process group must exist before the model is built (zero.Init partitions at construction);
- its JIT-compiled C++ ops (on CPU `deepspeed_shm_comm` is built at every comm init, ~60-150 s the first time)
  are cached per machine under <paths.cache_dir>/torch_extensions unless TORCH_EXTENSIONS_DIR says otherwise,
  so only the first DeepSpeed run on a machine compiles.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from internvl_exp.config.schema import Config
from internvl_exp.dist import is_main_process
from internvl_exp.launch.torchrun import free_port
from internvl_exp.outputs import write_json_atomic

log = logging.getLogger(__name__)


def extensions_dir(cache_dir: str | Path) -> Path:
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path(cache_dir) / "torch_extensions")


def prepare_environment(cfg: Config, cpu: bool) -> None:
    """Before TrainingArguments (and before deepspeed is imported): env rendezvous, accelerator, op cache."""
    if cpu:  # also without DeepSpeed: transformers imports it, and it warns "Setting accelerator to CPU" unless told
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if cfg.deepspeed.stage is None:
        return
    os.environ["TORCH_EXTENSIONS_DIR"] = str(extensions_dir(cfg.paths.cache_dir))
    if not os.environ.get("WORLD_SIZE"):  # one process, no launcher

        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        log.info("DeepSpeed in one process: env rendezvous on %s:%s", os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])


SHM_OP = "deepspeed_shm_comm"  # the C++ op DeepSpeed's CPU accelerator compiles at its first comm init


def op_build_dir(name: str = SHM_OP) -> Path:
    """Where torch's JIT build puts (and later finds) `name` under TORCH_EXTENSIONS_DIR (per Python/CUDA version)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


_announced = False


def announce_op_build(cfg: Config, cpu: bool) -> None:
    """Just before DeepSpeed's comm init (ZeRO-3: before the model; else when training starts): say that it
    compiles its CPU op, which is otherwise ~1-3 minutes of silence on the first DeepSpeed run of a machine."""
    global _announced
    if cfg.deepspeed.stage is None or not cpu or not is_main_process() or _announced:
        return
    _announced = True
    try:
        build = op_build_dir()
    except Exception:  # torch moved its private helper: say nothing rather than something wrong
        return
    if not (build / f"{SHM_OP}.so").is_file():
        log.info("DeepSpeed on CPU: compiling its C++ op %s now, once per machine (~1-3 min; cached in %s, later "
                 "runs start at once)", SHM_OP, build.parent)


def init_before_model(cfg: Config, args: Any, cpu: bool) -> None:
    """After TrainingArguments, before the model: ZeRO-3 needs the process group at construction; and the
    DeepSpeed JSON as the Trainer filled it goes into the run directory as deepspeed.json."""
    if cfg.deepspeed.stage is None:
        return
    if cfg.deepspeed.stage == 3:
        import deepspeed

        announce_op_build(cfg, cpu)
        _ = args.device  # sets up accelerate's state first
        from datetime import timedelta

        deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl",
                                   timeout=timedelta(seconds=int(cfg.distributed.timeout_s)))


def write_deepspeed_json(args: Any, path: Path) -> None:
    config = getattr(args, "hf_deepspeed_config", None)
    if config is not None and is_main_process():
        write_json_atomic(path, config.config)
