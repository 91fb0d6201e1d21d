"""MPO against SFT on the same pairs, and a live reference copy against precomputed reference log-probs.

    python bench/mpo.py                 # print the table
    python bench/mpo.py --write-docs    # and update the "## MPO" section of docs/benchmarks.md

Each case is `python launch.py` in its own process on CPU, float32, with a small random-init model saved once as a
checkpoint (the tiny preset with a 512-wide, 8-layer LLM and a 256-wide ViT, 43.5M parameters: `MID` of
bench/plan_accuracy.py), on the same pairs (the generated pair demo, `--pairs` of them):

- sft: `objective=sft` on the chosen answers (one conversation per pair: question, chosen answer);
- mpo, live copy: `objective=mpo` with a frozen copy of the starting weights as reference (objective.reference=null);
- mpo, precomputed: `objective.reference=precomputed` (the reference scores the pairs once before training, then
  is released; the step looks its log-probs up).

Step time: the median wall time between optimizer steps (bench/step_timer.py), the first `--warmup` steps left
out. Peak memory: the peak RSS of the case's process (resource.getrusage(RUSAGE_CHILDREN) in a wrapper process of
its own, so one case's peak does not carry into the next), and metrics.json's RSS growth during training (peak RSS
at the end minus the peak before the trainer was built). Beside them the planner's prediction for the run
(metrics.json `memory_plan`: the peak of tensor bytes, the reference's weights and its forward's transient).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.plan_accuracy import MID  # noqa: E402

MIB = 1 << 20
GEOMETRY = ["model.image_size=224", "model.patch_size=14", "model.max_dynamic_patch=2"]
# Runs the command given and prints the peak RSS (KiB on Linux) of it and its children, once it has exited.
PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def make_checkpoint(out: Path) -> None:
    """The MID model's random init, saved with its tokenizer and processor (model=local loads it)."""
    import torch

    from internvl_exp.launch.precheck import compose_config
    from internvl_exp.models.loading import load_model, load_processor
    from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

    cfg = compose_config(["model=tiny", *MID, *GEOMETRY])
    tokenizer = load_tiny_tokenizer()
    torch.manual_seed(0)
    load_model(cfg.model, tokenizer).save_pretrained(out)
    load_processor(cfg.model, tokenizer, cfg.resolved.tokens_per_tile).save_pretrained(out)


def make_data(work: Path, n_pairs: int) -> tuple[Path, Path]:
    """(pair meta, SFT meta) over the same `n_pairs` pairs of the generated demo (one third per dataset)."""
    from internvl_exp.data.demo_pref import generate_pair_demo

    demo = generate_pair_demo(work / "demo_pref")
    meta = json.loads((demo / "meta.json").read_text())
    pairs, sft = {}, {}
    per = max(1, n_pairs // len(meta))
    for name, spec in meta.items():
        root = Path(spec["root"]) if Path(spec["root"]).is_absolute() else demo / spec["root"]
        src = Path(spec["annotation"]) if Path(spec["annotation"]).is_absolute() else demo / spec["annotation"]
        lines = [json.loads(x) for x in src.read_text().splitlines()[:per]]
        (work / f"{name}_pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        conv = [{**({"image": x["image"]} if "image" in x else {}),
                 "conversations": [{"from": "human", "value": x["question"]}, {"from": "gpt", "value": x["chosen"]}]}
                for x in lines]
        (work / f"{name}_sft.jsonl").write_text("".join(json.dumps(x) + "\n" for x in conv))
        pairs[name] = {"root": str(root), "annotation": str(work / f"{name}_pairs.jsonl")}
        sft[name] = {"root": str(root), "annotation": str(work / f"{name}_sft.jsonl")}
    (work / "pairs.json").write_text(json.dumps(pairs))
    (work / "sft.json").write_text(json.dumps(sft))
    return work / "pairs.json", work / "sft.json"


CASES = [  # (label, overrides)
    ("sft on the chosen answers", ["objective=sft", "data.meta_path={sft}"]),
    ("mpo, live reference copy", ["objective=mpo", "data.meta_path={pairs}"]),
    ("mpo, precomputed reference", ["objective=mpo", "objective.reference=precomputed", "data.meta_path={pairs}"]),
]


def run_case(index: int, work: Path, checkpoint: Path, args: argparse.Namespace) -> dict:
    label, overrides = CASES[index]
    name = f"case{index}"
    times = work / f"{name}.times.json"
    cmd = [sys.executable, "-c", PEAK_RSS, sys.executable, str(ROOT / "bench" / "step_timer.py"), str(ROOT / "launch.py"),
           "model=local", f"model.path={checkpoint}", "model.template=internvl2_5", "model.dtype=float32", *GEOMETRY,
           "data=meta", "data.generate_demo=false", f"data.max_seq_length={args.max_seq_length}", "freeze=full", f"trainer.per_device_train_batch_size={args.batch}",
           f"trainer.max_steps={args.steps}", "trainer.logging_steps=1", "trainer.bf16=false", "trainer.device=cpu",
           "trainer.save_final=false", "trainer.save_strategy=no", "trainer.eval_strategy=no",
           "trainer.dataloader_num_workers=0", f"paths.output_dir={work / 'out'}", f"paths.cache_dir={work / 'cache'}",
           f"run_name={name}", *[o.format(pairs=work / "pairs.json", sft=work / "sft.json") for o in overrides]]
    env = {**os.environ, "STEP_TIMES": str(times), "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if res.returncode != 0:
        sys.exit(f"{label}: launch.py failed\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    peak_kb = int(next(line.split()[1] for line in res.stdout.splitlines() if line.startswith("PEAK_RSS_KB")))
    ends = json.loads(times.read_text())["step_end"]
    steps = [b - a for a, b in zip(ends, ends[1:])][args.warmup:]
    metrics = json.loads((work / "out" / "default" / name / "metrics.json").read_text())
    plan = metrics["memory_plan"]
    return {"label": label, "step_s": statistics.median(steps), "steps_timed": len(steps),
            "peak_rss_mib": peak_kb * 1024 / MIB, "rss_growth_mib": plan["measured_train_rss_growth_gb"] * 1024,
            "predicted_peak_mib": plan["peak_bytes"] / MIB, "predicted_reference_mib": plan["reference_bytes"] / MIB,
            "predicted_reference_forward_mib": plan["reference_forward_bytes"] / MIB, "reference_mode": plan["reference"],
            "parameters_held": (metrics.get("preference") or {}).get("parameters_held"),
            "reference": (metrics.get("preference") or {}).get("reference", "-"), "wall_s": wall}


def table(rows: list[dict]) -> str:
    sft = rows[0]["step_s"]
    live = next(r for r in rows if r["reference"] == "copy")
    out = ["| case | median step (s) | vs sft | peak RSS (MiB) | RSS growth in training (MiB) | planner: peak tensors "
           "(MiB) | planner: reference weights + forward (MiB) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['label']} | {r['step_s']:.3f} | **{r['step_s'] / sft:.2f}x** | {r['peak_rss_mib']:.0f} | "
                   f"{r['rss_growth_mib']:.0f} | {r['predicted_peak_mib']:.0f} | {r['predicted_reference_mib']:.0f} + "
                   f"{r['predicted_reference_forward_mib']:.0f} |")
    pre = next(r for r in rows if r["reference"] == "precomputed")
    out.append("")
    out.append(f"Live copy minus precomputed: peak RSS {live['peak_rss_mib'] - pre['peak_rss_mib']:+.0f} MiB, RSS growth "
               f"in training {live['rss_growth_mib'] - pre['rss_growth_mib']:+.0f} MiB; the planner: "
               f"{live['predicted_peak_mib'] - pre['predicted_peak_mib']:+.0f} MiB "
               f"(reference weights {live['predicted_reference_mib']:.0f} + its forward "
               f"{live['predicted_reference_forward_mib']:.0f}). Parameters held by policy and reference: "
               f"{live['parameters_held']:,} (live copy) and {pre['parameters_held']:,} (precomputed).")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=48, help="pairs of the demo (a third per dataset)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="first step intervals left out of the median")
    p.add_argument("--batch", type=int, default=4, help="per-device batch: pairs (mpo) or conversations (sft)")
    p.add_argument("--max-seq-length", type=int, default=256,
                   help="data.max_seq_length: the planner plans every row at this length (the pairs reach ~240)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    from bench.docs_section import publish

    work = Path(tempfile.mkdtemp(prefix="bench_mpo_"))
    try:
        make_checkpoint(work / "checkpoint")
        make_data(work, args.pairs)
        rows = []
        for index, (label, _) in enumerate(CASES):
            rows.append(run_case(index, work, work / "checkpoint", args))
            r = rows[-1]
            print(f"{label}: median step {r['step_s']:.3f} s over {r['steps_timed']} steps, peak RSS "
                  f"{r['peak_rss_mib']:.0f} MiB, {r['wall_s']:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch
    import transformers

    section = f"""## MPO

MPO against SFT on the same pairs, and a live reference copy against precomputed reference log-probs
(`bench/mpo.py`). Each case is `python launch.py` in its own process on CPU, float32, full fine-tune, batch
{args.batch}, {args.steps} steps, one torch thread: a 43.5M-parameter random-init model (the tiny preset with a
512-wide 8-layer LLM and a 256-wide ViT, saved once as a checkpoint), {args.pairs} pairs of the generated pair demo
(two thirds with one image at up to 2 tiles + thumbnail of 64 tokens each, one third text-only). SFT trains on the
chosen answers of the same pairs (one conversation per pair); `data.max_seq_length={args.max_seq_length}`, close to
the longest pair, because the planner plans every row at that length. An MPO step runs twice the sequences of an SFT step
(chosen and rejected) plus, with a live copy, the reference's forward over both. *median step*: the median time
between optimizer steps, the first {args.warmup} left out.

{table(rows)}

**What the memory columns compare.** The planner predicts the peak of live tensor bytes on one device (for a CPU
run: weights, gradients, AdamW state, activations and the reference). Peak RSS is the whole process: the Python
interpreter and the imported libraries (torch, transformers, DeepSpeed: several hundred MiB before any tensor),
allocator slack and memory freed but not returned to the OS, the data pipeline, and the pre-training phase (the
precomputed case loads the reference copy, scores the pairs with it and frees it before the trainer is built, so
its process peak can still hold both models if that phase is the highest). The RSS growth in training starts from
the peak before the trainer is built and so leaves most of that out, but it includes allocator slack. Neither is
device memory: compare the differences between rows with the planner's differences, not the absolute numbers (on
a GPU, metrics.json's `memory_plan.measured_peak_gb` is torch's allocator peak, the number the planner models).
The measured difference between the two MPO rows comes out below the planner's: both runs hold the reference copy
when the RSS baseline is taken (it is loaded with the policy); the precomputed run frees it before training and the
allocator can hand those pages to the training tensors, so less of its training shows as new RSS. RSS cannot
tell how much of the reference's forward transient (the planner's second term) reused pages freed earlier; a
GPU's allocator peak can (not measured here).

**Machine**: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs while measured), Python
{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}; {time.strftime('%Y-%m-%d')}."""
    publish(section, args.write_docs, "python bench/mpo.py --write-docs")


if __name__ == "__main__":
    main()
