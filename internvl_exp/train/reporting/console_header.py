"""The short header a run prints at its start, instead of the whole config tree.

The full resolved config is always in the run's `config.yaml`; `print_config=true` also prints it as a tree
on the console (launch/console.py). The header comes in two parts, each where its facts are known:

  launch_header    the Hydra job, before anything heavy is imported: the model and where its weights come
                   from, what the freeze group trains, how the training processes start (distributed group,
                   DeepSpeed stage/offload), where the outputs go.
  training_header  train/recipe/run.py, after the data scan and the model build, logged by the main process only
                   (the other ranks log warnings only): data size, trainable / total parameters, and the
                   planner's verdict for this run.

Both are logged as plain text (no rich markup): on the console and in train.log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from internvl_exp.config.eval_settings import has_eval_datasets
from internvl_exp.config.schema import Config
from internvl_exp.config.show import settings_line
from internvl_exp.launch.console import print_config_tree
from internvl_exp.train.planning.memory_plan import _zero

log = logging.getLogger(__name__)

_WIDTH = 10  # label column


def _row(label: str, text: str) -> str:
    return f"  {label:<{_WIDTH}}{text}"


def _count(n: int) -> str:
    """198,176 -> 198.2K; 8,075,365,376 -> 8.08B."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}" if n < 100 * div else f"{n / div:,.0f}{unit}"
    return str(n)


def model_line(cfg: Config, weights: Any) -> str:
    """`internvl2_8b: native weights from /models/InternVL2-8B (HF cache)` or `tiny: random init (model.arch)`."""
    m = cfg.model
    if weights is None:
        return f"{m.name}: random init from model.arch (no weights), tiny tokenizer"
    how = "random init from model.arch; tokenizer" if m.random_init else f"{weights.layout}-layout weights"
    return f"{m.name}: {how} from {weights.path} ({weights.origin})"


def trains_line(cfg: Config) -> str:
    """`freeze=lora_llm: llm lora (r=16, alpha=32); vision, projector, lm_head frozen`."""
    f = cfg.freeze
    parts = dict(f.parts)
    by_mode: dict[str, list[str]] = {}
    for part, mode in parts.items():
        by_mode.setdefault(str(mode), []).append(part)
    if f.get("vit_last_n"):
        by_mode.setdefault("full", []).insert(0, f"vision last {f.vit_last_n} layers")
    pieces = []
    for mode in ("full", "lora", "frozen"):
        names = by_mode.pop(mode, [])
        if names:
            extra = f" (r={f.lora.r}, alpha={f.lora.alpha:g})" if mode == "lora" else ""
            pieces.append(f"{', '.join(names)} {mode}{extra}")
    pieces += [f"{', '.join(n)} {m}" for m, n in by_mode.items()]
    return f"freeze={f.name}: " + "; ".join(pieces)


def processes_line(cfg: Config) -> str:
    """`torchrun: 8 process(es) x 1 node(s); DeepSpeed ZeRO-2 (optimizer offload)` or `single process; no DeepSpeed`."""
    d = cfg.distributed
    world = int(cfg.resolved.world_size)
    if world == 1 and d.name == "single":
        start = "single process"
    else:
        start = f"{d.name}: {d.get('nproc_per_node', 1)} process(es) per node x {d.get('nnodes', 1)} node(s)"
    stage, off_opt, off_par, _ = _zero(cfg)
    if stage:
        offload = [w for w, on in (("optimizer", off_opt), ("parameter", off_par)) if on]
        ds = f"DeepSpeed ZeRO-{stage}" + (f" ({' and '.join(offload)} offload)" if offload else "")
    else:
        ds = "no DeepSpeed (DDP)" if world > 1 else "no DeepSpeed"
    device = cfg.trainer.device if cfg.trainer.device != "auto" else "auto (a GPU if visible, else CPU)"
    precision = "bf16" if cfg.trainer.bf16 else str(cfg.model.dtype)
    return f"{start}; {ds}; device {device}, {precision}"


def data_line(cfg: Config) -> str:
    """`data=demo: /data/mine/meta.json; eval off (...)`: what trains and what it is evaluated on, by where it
    comes from (a group's name alone hides an overridden data.meta_path)."""
    d = cfg.data

    def sources(node: Any) -> str:
        parts = [str(node.meta_path)] if node.get("meta_path") else []
        if node.get("datasets"):
            parts.append("datasets " + ", ".join(node.datasets))
        return " + ".join(parts)

    fraction = d.get("eval_fraction") or 0.0
    if fraction:
        ev = f"a held-out {fraction:g} of the training lines (data.eval_fraction)"
    elif has_eval_datasets(d):
        ev = sources(d.eval)
    else:
        ev = "off (no data.eval.meta_path, data.eval.datasets or data.eval_fraction set)"
    return f"data={d.name}: {sources(d) or 'no datasets'}; eval {ev}"


def launch_header(cfg: Config, weights: Any, run_dir: Path) -> str:
    """The part of the header the Hydra job knows before training starts."""
    sweep = f" (sweep {cfg.sweep_name})" if cfg.sweep_name else ""
    return "\n".join([
        f"run {cfg.run_name}{sweep}",
        _row("model", model_line(cfg, weights)),
        _row("trains", trains_line(cfg)),
        _row("processes", processes_line(cfg)),
        _row("settings", settings_line(cfg)),
        _row("outputs", f"{run_dir} (full config: config.yaml; print_config=true prints it here)"),
        _row("data", data_line(cfg)),
    ])


def print_launch_header(cfg: Config, resolved: dict[str, Any], weights: Any, run_dir: Path) -> None:
    """The launch header, logged (console and train.log); the whole config tree on the console too under
    print_config=true."""
    if cfg.print_config:
        print_config_tree(resolved)
    log.info("%s", launch_header(cfg, weights, run_dir))


def planner_line(plan: Any) -> str:
    """The planner's verdict for this run: fits / does not fit on the device, or a note on CPU."""
    if plan.device.get("name") == "cpu" and plan.fits is None:
        return (f"CPU run: predicted peak ~{plan.peak_gb:.2f} GiB of tensors; no device memory to check "
                f"(trainer.device_memory_gb=N checks against N GiB)")
    t = f"; ~{plan.step_time_s:.2f} s/step at {plan.mfu:.0%} MFU" if plan.step_time_s else ""
    return plan.verdict() + t


def training_header(data_report: Any, plan: Any) -> str:
    """The part of the header known once the data is scanned and the model built (main process)."""
    per = ", ".join(f"{k} {v:,}" for k, v in data_report.per_dataset.items())
    dropped = getattr(data_report, "dropped_too_long", None)
    if dropped:
        per += "; dropped as too long: " + ", ".join(f"{k} {v:,}" for k, v in dropped.items())
    steps = f"; {plan.steps:,} optimizer steps" if plan.steps else ""
    share = 100.0 * plan.trainable / plan.parameters if plan.parameters else 0.0
    parts = ", ".join(f"{p} {_count(n)}" for p, n in plan.trainable_per_part.items() if n) or "nothing"
    return "\n".join([
        "data and model (after the scan and the build):",
        _row("data", f"{data_report.samples:,} samples" + (f" ({per})" if per else "") + steps),
        *([_row("exif", note)] if (note := data_report.exif_note()) else []),
        _row("params", f"{_count(plan.trainable)} of {_count(plan.parameters)} trainable ({share:.1f}%): {parts}"),
        _row("planner", planner_line(plan)),
        _row("loss", "chunked (trainer.chunked_loss: no full logits)" if getattr(plan, "loss", None) == "chunked"
             else "full logits (trainer.chunked_loss=false)"),
    ])
