"""Sweep report: one table and one figure comparing the jobs of a sweep.

    python -m internvl_exp.tools.report outputs/<experiment>/multirun/<sweep_name>

writes `summary.md` (one row per job: overrides that vary, status, final and best loss, objective, tokens/s,
MFU, runtime, link to the job's directory; failures with their error) and `summary.png` (loss curves per job,
and the objective against each swept parameter). It runs by itself when a sweep ends (hydra_callbacks.py)
and can be rerun any time, e.g. while a long sweep is still going. Reads only metrics.json and
overrides.yaml of each job, so it works on any machine the directory is copied to.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_JOB_DIR = re.compile(r"^(\d+)_")


@dataclass
class Job:
    num: int
    path: Path
    params: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.metrics.get("status", "unknown (no metrics.json: still running or killed)"))

    @property
    def objective(self) -> float | None:
        v = self.metrics.get("objective")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    @property
    def losses(self) -> list[tuple[int, float]]:
        return [(h["step"], h["loss"]) for h in self.metrics.get("loss_history", [])]


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    params = {}
    for o in overrides:
        key, _, value = str(o).lstrip("+~").partition("=")
        params[key] = value
    return params


def collect_jobs(sweep_dir: Path) -> list[Job]:
    jobs = []
    for d in sweep_dir.iterdir():
        m = _JOB_DIR.match(d.name)
        if not d.is_dir() or not m:
            continue
        overrides = yaml.safe_load((d / "overrides.yaml").read_text()) if (d / "overrides.yaml").exists() else []
        metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() else {}
        jobs.append(Job(int(m.group(1)), d, parse_overrides(overrides or []), metrics))
    return sorted(jobs, key=lambda j: j.num)


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (in first-seen order)."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.params))
    return [k for k in keys if len({j.params.get(k) for j in jobs}) > 1]


def _num(value: Any, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _optuna_results(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / "optimization_results.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


def render_markdown(sweep_dir: Path, jobs: list[Job], png_name: str | None = "summary.png") -> str:
    keys = swept_keys(jobs)
    common = {k: v for k, v in (jobs[0].params.items() if jobs else []) if k not in keys}
    statuses: dict[str, int] = {}
    for j in jobs:
        statuses[j.status] = statuses.get(j.status, 0) + 1
    metric = next((j.metrics["optimized_metric"] for j in jobs if j.metrics.get("optimized_metric")), "final_loss")
    lines = [
        f"# Sweep `{sweep_dir.name}`",
        "",
        f"- directory: `{sweep_dir}`",
        f"- jobs: {len(jobs)} ({', '.join(f'{n} {s}' for s, n in statuses.items())})",
        f"- swept: {', '.join(f'`{k}`' for k in keys) or '–'}",
        f"- common overrides: {', '.join(f'`{k}={v}`' for k, v in common.items()) or '–'}",
        f"- objective: `{metric}` (from each job's metrics.json)",
    ]
    scored = [j for j in jobs if j.objective is not None]
    if scored:
        low = min(scored, key=lambda j: j.objective)
        lines.append(f"- lowest {metric}: {_num(low.objective)} (job {low.num})")
    optuna = _optuna_results(sweep_dir)
    if optuna and "best_params" in optuna:
        best = ", ".join(f"`{k}={v}`" for k, v in optuna["best_params"].items())
        lines.append(f"- Optuna best: {_num(optuna.get('best_value'))} with {best} (optimization_results.yaml)")
    lines += [
        "",
        "| job | overrides | status | final loss | best loss | objective | tokens/s | MFU | runtime (s) | run dir |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for j in jobs:
        tp = j.metrics.get("throughput") or {}
        overrides = ", ".join(f"{k}={j.params.get(k, '–')}" for k in keys) or "–"
        mfu = tp.get("mfu")
        lines.append(
            f"| {j.num} | {_md_cell(overrides)} | {_md_cell(j.status)} | {_num(j.metrics.get('final_loss'))} | "
            f"{_num(j.metrics.get('best_loss'))} | {_num(j.objective)} | {_num(tp.get('tokens_per_s'), '.0f')} | "
            f"{f'{mfu:.1%}' if isinstance(mfu, (int, float)) else '–'} | {_num(j.metrics.get('runtime_s'), '.1f')} | "
            f"[dir](<{j.path.name}/>) |"
        )
    failed = [j for j in jobs if j.metrics.get("error")]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- job {j.num} (`{j.path.name}`): {_md_cell(j.metrics['error'])}" for j in failed]
    if png_name:
        lines += ["", f"![loss curves and objective per swept parameter]({png_name})"]
    return "\n".join(lines) + "\n"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _short(value: Any) -> str:
    """Numbers with 4 significant digits (Optuna samples 0.0001329291894316216), anything else as is."""
    return f"{float(value):.4g}" if _is_number(value) else str(value)


# Keys whose values are learning rates: plotted on a log axis whatever their span (a sweep over 1e-4 and 3e-4
# still reads as a ratio). Any other positive numeric key goes log when it spans a decade or more.
_LR_KEY = re.compile(r"(^|[._])(lr|learning_rate)([._]|$)|_lr$")


def job_colors(jobs: list[Job]) -> dict[int, Any]:
    """One colour per job, the same in every panel: a qualitative colormap (tab10 up to 10 jobs, tab20 up to
    20, then tab20 + tab20b + tab20c for up to 60; past that the colours repeat and the job numbers tell)."""
    import matplotlib

    names = ["tab10"] if len(jobs) <= 10 else ["tab20"] if len(jobs) <= 20 else ["tab20", "tab20b", "tab20c"]
    palette = [c for n in names for c in matplotlib.colormaps[n].colors]
    return {j.num: palette[i % len(palette)] for i, j in enumerate(jobs)}


def _log_axis(key: str, xs: list[float]) -> bool:
    if not xs or min(xs) <= 0:
        return False
    return bool(_LR_KEY.search(key)) or max(xs) / min(xs) >= 10


def build_figure(jobs: list[Job]):
    """The summary figure: loss curves per job (each ending in its job number) and the objective against
    each swept parameter (points labelled by job number), one colour per job, the legend right of the panels."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    keys = swept_keys(jobs)
    colors = job_colors(jobs)
    metric = next((j.metrics["optimized_metric"] for j in jobs if j.metrics.get("optimized_metric")), "objective")
    panels = 1 + max(1, len(keys))
    # constrained layout reserves room for a legend placed "outside": it never covers a curve.
    fig, axes = plt.subplots(1, panels, figsize=(5.0 * panels + 3.0, 4.4), squeeze=False, layout="constrained")
    ax = axes[0][0]
    for j in jobs:
        if j.losses:
            steps, losses = zip(*j.losses)
            label = ", ".join(f"{k}={_short(j.params.get(k))}" for k in keys)
            ax.plot(steps, losses, marker=".", markersize=3, linewidth=1.2, color=colors[j.num],
                    label=f"{j.num}: {label}" if label else str(j.num))
            ax.annotate(str(j.num), (steps[-1], losses[-1]), xytext=(3, 0), textcoords="offset points",
                        fontsize="x-small", color=colors[j.num], va="center")
    ax.set(title="training loss", xlabel="step", ylabel="loss")
    if any(j.losses for j in jobs):
        n = sum(1 for j in jobs if j.losses)
        fig.legend(loc="outside right upper", fontsize="x-small", ncols=1 if n <= 24 else 2, title="job: overrides",
                   title_fontsize="x-small")
    for i, key in enumerate(keys or [None]):
        ax = axes[0][i + 1]
        if key is None:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no swept parameter", ha="center", va="center")
            continue
        shown = [j for j in jobs if j.objective is not None and key in j.params]
        values = [j.params[key] for j in shown]
        if shown and all(_is_number(v) for v in values):
            xs = [float(v) for v in values]
            if _log_axis(key, xs):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
        elif shown:
            cats = list(dict.fromkeys(str(v) for v in values))
            xs = [float(cats.index(str(v))) for v in values]
            short = [c if len(c) <= 30 else "…" + c[-29:] for c in cats]  # long values (paths): keep the tail
            ax.set_xticks(range(len(cats)), short, rotation=30, ha="right", fontsize="small")
        else:
            xs = []
        ax.scatter(xs, [j.objective for j in shown], c=[colors[j.num] for j in shown], s=28, zorder=2)
        for x, j in zip(xs, shown):
            ax.annotate(str(j.num), (x, j.objective), xytext=(4, 3), textcoords="offset points", fontsize="x-small",
                        color=colors[j.num])
        failed = [j for j in jobs if j.objective is None and key in j.params]
        if failed:
            ax.set_title(f"{metric} vs {key}\n({len(failed)} job(s) without a value not shown)", fontsize="small")
        else:
            ax.set_title(f"{metric} vs {key}", fontsize="small")
        ax.set(xlabel=key, ylabel=metric)
    return fig


def render_figure(jobs: list[Job], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = build_figure(jobs)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(sweep_dir: Path) -> tuple[Path, Path]:
    """Write summary.md and summary.png into `sweep_dir`; return their paths."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(
            f"{sweep_dir}: no job directories (<num>_<overrides>/) here; pass a sweep directory, "
            "e.g. outputs/<experiment>/multirun/<sweep_name>"
        )
    md, png = sweep_dir / "summary.md", sweep_dir / "summary.png"
    render_figure(jobs, png)
    md.write_text(render_markdown(sweep_dir, jobs, png.name))
    return md, png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m internvl_exp.tools.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="outputs/<experiment>/multirun/<sweep_name>")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory; pass a sweep directory "
              "(outputs/<experiment>/multirun/<sweep_name>)", file=sys.stderr)
        return 2
    try:
        md, png = write_report(args.sweep_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {md}\nwrote {png}")
    return 0


if __name__ == "__main__":
    from internvl_exp.shutdown import skip_final_collection

    skip_final_collection()
    sys.exit(main())
