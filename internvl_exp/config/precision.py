"""Which dtype the weights are loaded in, from model.dtype and how the run trains (docs/distributed.md).

    model.dtype=auto (the real presets)   float32 without DeepSpeed: trainer.bf16 then autocasts the compute
                                          and the AdamW update stays on fp32 master weights;
                                          bfloat16 under DeepSpeed with trainer.bf16: DeepSpeed keeps the fp32
                                          master weights and optimizer state in its (ZeRO) optimizer itself
    model.dtype=float32|bfloat16|float16  exactly that; half-precision weights trained without DeepSpeed
                                          (pure bf16: weights and AdamW state in bf16, small updates round
                                          away) need trainer.pure_half_precision=true and warn

Light: no torch import (used by config validation).
"""

from __future__ import annotations

from internvl_exp.config.schema import Config

DTYPES = ("auto", "float32", "bfloat16", "float16")
HALF = ("bfloat16", "float16")


def weights_dtype(cfg: Config) -> str:
    """The dtype to load the model in for this run."""
    dtype = str(cfg.model.dtype)
    if dtype != "auto":
        return dtype
    return "bfloat16" if cfg.deepspeed.stage is not None and cfg.trainer.bf16 else "float32"


def pure_half_precision(cfg: Config) -> bool:
    """Half-precision weights updated in place by a torch optimizer (no fp32 master copy)."""
    return weights_dtype(cfg) in HALF and cfg.deepspeed.stage is None


def precision_problems(cfg: Config) -> list[str]:
    if cfg.model.dtype not in DTYPES:
        return [f"model.dtype: {cfg.model.dtype!r} is not one of {list(DTYPES)}"]
    if pure_half_precision(cfg) and not cfg.trainer.pure_half_precision:
        return [f"model.dtype={cfg.model.dtype} without DeepSpeed trains pure {cfg.model.dtype}: the weights and the "
                "AdamW state have no fp32 master copy and small updates round away; use model.dtype=auto (fp32 "
                "weights, with trainer.bf16=true for bf16 autocast), a DeepSpeed stage, or accept it with "
                "trainer.pure_half_precision=true"]
    return []
