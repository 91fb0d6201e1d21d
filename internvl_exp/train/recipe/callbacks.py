"""Throughput and MFU: tokens/s (all and supervised), samples/s, tiles/s, padding fraction, model FLOPs and
peak memory, added to every Trainer log (so the console, TensorBoard and WandB see them) and summarised
for metrics.json.

The counts need the batch itself, which TrainerCallback events never see: `InternVLTrainer.training_step`
hands each batch to `observe_batch` first. Counts stay on the device between logs (no per-step sync).
In a distributed run every rank counts its own batches; rank 0's numbers times the world size stand for
all devices (the ranks see equally sized batches on average), MFU is per device.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from typing import Any, Mapping

import torch
from transformers import TrainerCallback

from internvl_exp.data.templates import IGNORE_INDEX
from internvl_exp.train.planning.flops import FlopsModel, peak_tflops_for

log = logging.getLogger(__name__)

LOG_KEYS = ("tokens_per_s", "tokens_per_s_per_device", "supervised_tokens_per_s", "samples_per_s", "tiles_per_s",
            "padding_fraction", "model_tflops_per_device", "mfu", "peak_mem_gb")


def peak_host_rss_gb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)  # bytes on macOS, KiB on Linux


class _Counts:
    """Running counts: device-side sums (tokens, tokens^2, supervised) plus host-side ones."""

    def __init__(self) -> None:
        self.device_sums: torch.Tensor | None = None
        self.padded = self.samples = self.tiles = 0

    def drain(self) -> dict[str, float]:
        sums = self.device_sums.tolist() if self.device_sums is not None else [0.0, 0.0, 0.0]
        out = {"tokens": sums[0], "tokens_sq": sums[1], "supervised": sums[2], "padded": self.padded,
               "samples": self.samples, "tiles": self.tiles}
        self.__init__()
        return out


class ThroughputCallback(TrainerCallback):
    def __init__(self, flops: FlopsModel, peak_tflops: float | None = None, world_size: int = 1) -> None:
        self.flops = flops
        self.world_size = max(1, world_size)
        self.peak_tflops: float | None = peak_tflops
        self.peak_source: str | None = "trainer.peak_tflops" if peak_tflops else None
        self.device_name: str | None = None
        self._cuda_device: torch.device | None = None
        self._window = _Counts()
        self._total: dict[str, float] = {}
        self._t_start: float | None = None
        self._t_window: float | None = None
        self._t_end: float | None = None
        self._steps_in_window = 0
        # Counts and training seconds of the run's earlier attempts (a resume: from the checkpoint).
        self._carried: dict[str, float] = {}
        self._carried_seconds = 0.0

    # -- fed by InternVLTrainer.training_step -------------------------------------------------------------
    def observe_batch(self, inputs: Mapping[str, Any]) -> None:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        labels = inputs.get("labels")
        pixels = inputs.get("pixel_values")
        packed = inputs.get("sample_lengths")
        if packed is not None:  # a packed row: its samples' lengths (attention cost is per sample, not per row)
            lengths = packed.to(ids.device, torch.float64)
        elif mask is not None and mask.dim() == 2:
            lengths = mask.sum(dim=1).to(torch.float64)
        else:  # rows without a padding mask: every position is a real token
            lengths = torch.full((ids.shape[0],), float(ids.shape[1]), dtype=torch.float64, device=ids.device)
        supervised = (labels != IGNORE_INDEX).sum().to(torch.float64) if labels is not None else lengths.new_zeros(())
        sums = torch.stack([lengths.sum(), (lengths**2).sum(), supervised])
        w = self._window
        w.device_sums = sums if w.device_sums is None else w.device_sums + sums
        w.padded += ids.numel()
        w.samples += len(lengths)
        w.tiles += int(pixels.shape[0]) if pixels is not None else 0

    # -- Trainer events -----------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        device = getattr(args, "device", None)
        if device is not None and device.type == "cuda":
            self._cuda_device = device
            self.device_name = torch.cuda.get_device_name(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            self.device_name = "cpu"
        if self.peak_tflops is None:
            self.peak_tflops = peak_tflops_for(self.device_name)
            self.peak_source = f"table ({self.device_name})" if self.peak_tflops else None
        if self.peak_tflops is None:
            log.info("MFU: no peak FLOPS known for device %r; set trainer.peak_tflops=<dense TFLOPS> to report it",
                     self.device_name)

    def on_step_begin(self, args, state, control, **kwargs):
        if self._t_start is None:
            self._t_start = self._t_window = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._steps_in_window += 1

    def exclude_seconds(self, seconds: float) -> None:
        """Time spent outside training steps (an evaluation) is left out of the rates."""
        if self._t_start is not None:
            self._t_start += seconds
            self._t_window += seconds

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self._t_window is None or self._steps_in_window == 0 or "eval_loss" in logs:
            return
        now = time.perf_counter()
        counts = self._window.drain()
        self._merge(counts)
        rates = self._rates(counts, now - self._t_window)
        self._t_window, self._steps_in_window = now, 0
        logs.update({k: round(v, 6) if isinstance(v, float) else v for k, v in rates.items() if v is not None})

    def on_train_end(self, args, state, control, **kwargs):
        self._t_end = time.perf_counter()
        if self._steps_in_window:
            self._merge(self._window.drain())
            self._steps_in_window = 0

    # -- numbers ------------------------------------------------------------------------------------------
    def _merge(self, counts: dict[str, float]) -> None:
        for k, v in counts.items():
            self._total[k] = self._total.get(k, 0) + v

    def _peak_mem_gb(self) -> float:
        if self._cuda_device is not None:
            return torch.cuda.max_memory_allocated(self._cuda_device) / 2**30
        return peak_host_rss_gb()

    def _rates(self, c: dict[str, float], seconds: float) -> dict[str, float | None]:
        seconds = max(seconds, 1e-9)
        world = self.world_size
        flops = self.flops.step_flops(c["tokens"], c["tokens_sq"], c["tiles"])
        achieved = flops / seconds / 1e12
        return {
            "tokens_per_s": c["tokens"] * world / seconds,
            "tokens_per_s_per_device": c["tokens"] / seconds,
            "supervised_tokens_per_s": c["supervised"] * world / seconds,
            "samples_per_s": c["samples"] * world / seconds,
            "tiles_per_s": c["tiles"] * world / seconds,
            "padding_fraction": 1.0 - c["tokens"] / c["padded"] if c["padded"] else 0.0,
            "model_tflops_per_device": achieved,
            "mfu": achieved / self.peak_tflops if self.peak_tflops else None,
            "peak_mem_gb": self._peak_mem_gb(),
        }

    def _run_totals(self, peek_window: bool) -> tuple[dict[str, float], float]:
        """Counts and training seconds of the whole run: earlier attempts + this one (+ the open window)."""
        totals = dict(self._carried)
        parts = [self._total]
        if peek_window and self._steps_in_window:
            w = self._window
            sums = w.device_sums.tolist() if w.device_sums is not None else [0.0, 0.0, 0.0]
            parts.append({"tokens": sums[0], "tokens_sq": sums[1], "supervised": sums[2], "padded": w.padded,
                          "samples": w.samples, "tiles": w.tiles})
        for part in parts:
            for k, v in part.items():
                totals[k] = totals.get(k, 0) + v
        seconds = self._carried_seconds
        if self._t_start is not None:
            seconds += (self._t_end or time.perf_counter()) - self._t_start
        return totals, seconds

    def checkpoint_state(self, accelerator: Any = None) -> dict[str, Any]:
        """The run's counts so far (this process's; rank 0's stand for all, as in `summary`)."""
        totals, seconds = self._run_totals(peek_window=True)
        return {"totals": totals, "seconds": seconds}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self._carried = {k: float(v) for k, v in state["totals"].items()}
        self._carried_seconds = float(state["seconds"])

    def summary(self) -> dict[str, Any]:
        """Whole-run numbers for metrics.json (from the first step to the end of training, over every attempt of
        a resumed run; the time between attempts is not counted)."""
        totals, seconds = self._run_totals(peek_window=False)
        if not totals.get("padded") or seconds <= 0:
            return {"steps_measured": False}
        rates = self._rates(totals, seconds)
        return {
            **rates,
            "seconds": seconds,
            "tokens": int(totals["tokens"]),
            "supervised_tokens": int(totals["supervised"]),
            "padded_tokens": int(totals["padded"]),
            "samples": int(totals["samples"]),
            "tiles": int(totals["tiles"]),
            "world_size": self.world_size,
            "device": self.device_name,
            "peak_tflops": self.peak_tflops,
            "peak_tflops_source": self.peak_source,
            "peak_gpu_memory_gb": (torch.cuda.max_memory_allocated(self._cuda_device) / 2**30
                                   if self._cuda_device is not None else None),
            "peak_host_rss_gb": peak_host_rss_gb(),
            "flops_per_part": {p: {"matmul_params": w.total, "trainable": w.trainable}
                               for p, w in self.flops.weights.items()},
        }


def install_first(trainer: Any, callback: TrainerCallback) -> None:
    """Add `callback` ahead of the Trainer's own, so the numbers it adds to a log reach the console printer
    and the TensorBoard/WandB callbacks that run after it."""
    trainer.callback_handler.callbacks.insert(0, callback)
