"""Framework overhead: seconds per training step of `python launch.py` against a minimal hand-written HF
`Trainer` script (bench/minimal_trainer.py) on the same model, data, batch and collator.

    python bench/overhead.py [--write-docs] [--steps 60] [--warmup 10] [--rounds 3]

Every variant runs as its own process through bench/step_timer.py, which clocks the end of every optimizer step
(the same hook on both sides). The variants run round-robin, `--rounds` times, so load on a shared machine
hits all of them alike. Two numbers per variant, from the steps after the warm-up:

  median step   the median of all its step times (every round pooled): robust to another job's burst, and
                blind to what happens only every logging_steps (logging)
  best round    the lowest per-round mean step time (logging steps included): the least disturbed round

One torch thread per process (OMP_NUM_THREADS=1): on a shared 2-core machine more threads only measure the
contention. The raw step times are kept in --raw (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from docs_section import publish  # noqa: E402
from machine import load_average, machine_line  # noqa: E402

BATCH = 4
VARIANTS = [  # (name, script, flags)
    ("minimal HF Trainer script", "bench/minimal_trainer.py", []),
    ("+ same-graph (keep_vision_in_graph)", "bench/minimal_trainer.py", ["--same-graph"]),
    ("+ our callbacks (throughput/MFU, loss windows)", "bench/minimal_trainer.py", ["--same-graph", "--callbacks"]),
    ("+ InternVLTrainer (parameter groups, fused AdamW)", "bench/minimal_trainer.py", ["--same-graph", "--callbacks", "--ours"]),
    ("`python launch.py`", "launch.py", []),
]


def run_variant(script: str, flags: list[str], steps: int, warmup: int, work: Path, tag: str) -> list[float]:
    common = [f"trainer.max_steps={steps}", f"trainer.per_device_train_batch_size={BATCH}", "trainer.save_final=false",
              "trainer.device=cpu", f"paths.output_dir={work / 'outputs'}"]
    if script == "launch.py":
        argv = [*common, f"run_name={tag}"]
    else:
        argv = [str(work / tag), *common, *flags]
    times = work / f"{tag}.json"
    env = {**os.environ, "STEP_TIMES": str(times), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "step_timer.py"), script, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{script} {' '.join(flags)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    ends = json.loads(times.read_text())["step_end"]
    assert len(ends) == steps, (script, len(ends))
    return [b - a for a, b in zip(ends, ends[1:])][warmup:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--raw", type=Path, default=Path(tempfile.gettempdir()) / "bench_overhead_raw.json",
                   help="where the step times go (JSON)")
    p.add_argument("--from-raw", action="store_true", help="only render the section from --raw (no runs)")
    args = p.parse_args()
    load_before = load_average()
    raw: dict[str, list[list[float]]] = {name: [] for name, _, _ in VARIANTS}
    if args.from_raw:
        raw = json.loads(args.raw.read_text())
        load_before, load_after = raw.pop("_load", ["?", "?"])
        args.rounds = len(next(iter(raw.values())))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in range(0 if args.from_raw else args.rounds):
            for i, (name, script, flags) in enumerate(VARIANTS):
                diffs = run_variant(script, flags, args.steps, args.warmup, work, f"r{r}v{i}")
                raw[name].append(diffs)
                print(f"round {r + 1}: {name}: mean {statistics.mean(diffs) * 1000:.1f} ms/step, "
                      f"median {statistics.median(diffs) * 1000:.1f}", flush=True)
                args.raw.write_text(json.dumps({**raw, "_load": [load_before, load_average()]}))
    if not args.from_raw:
        load_after = load_average()
    names = [n for n, _, _ in VARIANTS]
    med = {n: statistics.median([d for rnd in raw[n] for d in rnd]) for n in names}
    best = {n: min(statistics.mean(rnd) for rnd in raw[n]) for n in names}
    b_med, b_best = med[names[0]], best[names[0]]
    rows = "\n".join(
        f"| {n} | {med[n] * 1000:.1f} | **{med[n] / b_med:.3f}x** | {best[n] * 1000:.1f} | **{best[n] / b_best:.3f}x** | "
        f"{' / '.join(f'{statistics.mean(rnd) * 1000:.0f}' for rnd in raw[n])} |" for n in names)
    launch_med, launch_best = med[names[-1]] / b_med, best[names[-1]] / b_best
    spread = max(max(statistics.mean(r) for r in raw[n]) / min(statistics.mean(r) for r in raw[n]) for n in names)
    if launch_med <= 1.05 and launch_best <= 1.05:
        verdict = "within the target by both"
    elif max(launch_med, launch_best) < spread:
        verdict = ("within the target by the median step, above it by the best round" if launch_med <= 1.05 else
                   "above the target") + ", by less than this machine's noise"
    else:
        verdict = "above the target"
    steps_between = ", ".join(f"{names[i]} {(med[names[i]] - med[names[i - 1]]) * 1000:+.1f} ms"
                              for i in range(1, len(names)))
    section = f"""## Framework overhead

Seconds per training step of `python launch.py` against a minimal hand-written HF `Trainer` script
(`bench/minimal_trainer.py`) on the same model (the tiny preset, freeze=vision), the same data (`data=demo`,
the project's own dataset and collator in both, so only the framework around the Trainer differs), batch
{BATCH}, the same lr, schedule and seeds, on CPU. Each row adds one of our pieces to the minimal script; the
last row is the real entry point (Hydra, run directory, provenance, logging, preemption handler, every callback).
Every process is clocked by the same hook (`bench/step_timer.py`: the wall clock at each optimizer step's
`on_step_end`), steps {args.warmup + 1}-{args.steps}, {args.rounds} rounds run round-robin, one torch thread per
process. *median step*: the median of every step time of the variant (rounds pooled; robust to other jobs'
bursts, blind to the every-10-steps logging); *best round*: the lowest per-round mean (logging included).

| variant | median step (ms) | vs minimal | best round, mean step (ms) | vs minimal | per-round means (ms) |
|---|---|---|---|---|---|
{rows}

**launch.py / minimal: {launch_med:.3f}x by the median step, {launch_best:.3f}x by the best round** (target <= 1.05x):
{verdict}. Median step, each row against the one above: {steps_between}.

**Noise.** On this shared machine the per-round means of one and the same variant differ by up to {spread:.1f}x
(max/min over its rounds), so row-to-row differences smaller than that are not a measurement of the piece a
row adds; in particular the rows between the minimal script and launch.py do not add up (launch.py contains
all of them and is not the slowest). What the table does show: no piece of ours adds a per-step cost beyond
that noise, and the full entry point stays within ~{max(launch_med, launch_best):.2f}x of a plain Trainer. The plan
for a firm ratio: rerun on an idle machine with more rounds (`python bench/overhead.py --write-docs --rounds 7`),
where the 5% target is resolvable. Per step, launch.py adds to a plain Trainer only its callbacks (throughput/MFU
counting, loss windows, the preemption check, the loggers) and the same-graph hook (the vision path also runs
for a text-only batch), each of which the rows above isolate once the noise allows.

Start-up costs (imports,
data scan, model build, provenance) are outside these numbers: see "Start-up". The tiny model's step is tens
of milliseconds, so any per-step cost of the framework shows here at its largest; on a real model the same
absolute cost is a far smaller share.

{machine_line(f"load average (1/5 min: {load_before} before, {load_after} after); run once")}
"""
    publish(section, args.write_docs, "python bench/overhead.py --write-docs")


if __name__ == "__main__":
    main()
