"""Training throughput, MFU and peak memory of real-size random-init InternVL models on one GPU, with the
planner's prediction beside each measurement. No downloads: weights are random, the tokenizer is the tiny one.

    python bench/gpu.py --out bench_gpu.md           # on a GPU box (one H200: well under 8 minutes)
    python bench/gpu.py --smoke --out /tmp/smoke.md  # CPU, tiny model, 2 steps (what the test runs)

Models (presets whose dims are all sourced, so random init is allowed; docs/models.md):
  internvl3_1b   InternViT-300M + Qwen2.5-0.5B: the 1B class (InternVL2-1B's own LLM dims are not sourced)
  internvl2_8b   InternViT-300M + internlm2_5-7b: also InternVL2.5-8B's dims (InternVL2.5-8B's preset leaves
                 them unsourced, so this preset stands in for it)
Each row: the official 2nd-stage freeze (ViT frozen), bf16 weights, our fused AdamW, a fixed batch of
--batch rows x --seq tokens with --tiles 448-px tiles each, --warmup steps then --steps timed steps.
Variants: attention sdpa vs flash_attention_2 (only when flash-attn is installed), activation checkpointing
off vs on, padded rows vs the same samples packed into one row (`packed_batch`: sdpa masks it block-diagonally,
flash attention runs its varlen kernel).
tokens/s/GPU counts every token of the batch (no padding in these fixed rows); MFU uses the FLOPs model of
train/planning/flops.py and the device's dense bf16 peak; peak memory is torch.cuda.max_memory_allocated over the
timed steps, next to `plan_memory`'s predicted peak for the same shapes.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BUDGET_S = 7 * 60  # stop starting new rows after this (the whole script must stay under 8 minutes)


def variants(smoke: bool) -> list[dict]:
    models = ["tiny"] if smoke else ["internvl3_1b", "internvl2_8b"]
    flash = importlib.util.find_spec("flash_attn") is not None
    rows = []
    for model in models:
        for attn in ("sdpa", "flash_attention_2"):
            for ckpt in (False, True):
                for packed in (False, True):
                    skip = "flash-attn not installed" if attn == "flash_attention_2" and not flash else None
                    rows.append({"model": model, "attn": attn, "ckpt": ckpt, "packed": packed, "skip": skip})
    return rows


def packed_batch(ids, labels, pixels, flash: bool) -> dict:
    """The same samples as one packed row, as data/packing.py's PackedCollator hands them to the model: no
    attention_mask, positions restarting per sample (the block-diagonal causal mask under sdpa), each sample's
    first label ignored, and under flash attention the varlen kernel's cumulative lengths."""
    import torch

    n, seq = ids.shape
    labels = labels.clone()
    labels[:, 0] = -100
    out = {"input_ids": ids.reshape(1, -1), "labels": labels.reshape(1, -1), "pixel_values": pixels,
           "position_ids": torch.arange(seq, device=ids.device).repeat(n)[None]}
    if flash:
        cu = torch.arange(0, (n + 1) * seq, seq, dtype=torch.int32, device=ids.device)
        out.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=seq, max_length_k=seq)
    return out


def run_one(v: dict, args) -> dict:
    import torch

    from internvl_exp.config.geometry import tokens_per_tile
    from internvl_exp.models.loading import load_model
    from internvl_exp.models.registry import get_family
    from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer
    from internvl_exp.launch.precheck import compose_config
    from internvl_exp.train.planning.flops import FlopsModel, peak_tflops_for
    from internvl_exp.train.planning.memory_plan import GIB, plan_memory
    from internvl_exp.train.tuning.optim import build_optimizer
    from internvl_exp.train.tuning.trainable import make_trainable

    cuda = not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    overrides = [f"model={v['model']}", "model.random_init=true", "freeze=vision", f"model.attn_implementation={v['attn']}",
                 f"trainer.per_device_train_batch_size={args.batch}", f"trainer.activation_checkpointing={str(v['ckpt']).lower()}",
                 f"trainer.bf16={str(cuda).lower()}", f"model.dtype={'bfloat16' if cuda else 'float32'}"]
    cfg = compose_config(overrides)
    family = get_family(cfg.model.family)
    tokenizer = load_tiny_tokenizer()
    torch.manual_seed(0)
    with device:  # built where it trains: nothing is materialised on the host first
        model = load_model(cfg.model, tokenizer)
    model = make_trainable(model, family, cfg.freeze, cfg.model).model
    if v["ckpt"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = build_optimizer(model, family, cfg.optimizer)
    tpt = tokens_per_tile(cfg.model.image_size, cfg.model.patch_size, cfg.model.downsample_ratio)
    seq = max(args.seq, args.tiles * tpt + 16)
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(10, len(tokenizer), (args.batch, seq), generator=g)
    ids[:, 1:1 + args.tiles * tpt] = model.config.image_token_id
    labels = ids.clone()
    labels[ids == model.config.image_token_id] = -100
    dtype = torch.bfloat16 if cuda else torch.float32
    pixels = torch.randn(args.batch * args.tiles, 3, cfg.model.image_size, cfg.model.image_size, generator=g).to(device, dtype)
    ids, labels = ids.to(device), labels.to(device)
    if v["packed"]:  # the same tokens and tiles as one row (per-device batch 1)
        batch = packed_batch(ids, labels, pixels, flash=v["attn"] == "flash_attention_2")
        plan = plan_memory(cfg, setup=(model, family), world=1, running=True, batch=1, seq_len=args.batch * seq,
                           tiles=args.batch * args.tiles)
    else:
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "pixel_values": pixels}
        plan = plan_memory(cfg, setup=(model, family), world=1, running=True, seq_len=seq, tiles=args.tiles)
    flops = FlopsModel.from_model(model, family, tpt).step_flops(args.batch * seq, args.batch * seq**2, args.batch * args.tiles)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.steps
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_tflops_for(name) if cuda else None
    out = {
        "tokens_per_s": args.batch * seq / seconds,
        "step_s": seconds,
        "mfu": flops / seconds / (peak * 1e12) if peak else None,
        "peak_gb": torch.cuda.max_memory_allocated() / GIB if cuda else None,
        "planned_gb": plan.peak_gb,
        "params": plan.parameters,
        "seq": seq,
        "device": name,
    }
    del model, optimizer, batch
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def markdown(rows: list[dict], args) -> str:
    lines = [f"Batch {args.batch} x {rows[0].get('seq', args.seq) if rows else args.seq} tokens x {args.tiles} tiles per row, "
             f"freeze=vision, {args.steps} timed steps after {args.warmup} warm-up.", "",
             "| model | params | attention | checkpointing | rows | tokens/s/GPU | s/step | MFU | peak (GiB) | planned (GiB) | planned / peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = f"{r['params'] / 1e9:.2f}B" if r.get("params") else ""
        head = f"| {r['model']} | {params} | {r['attn']} | {'on' if r['ckpt'] else 'off'} | {'packed' if r['packed'] else 'padded'} |"
        if r.get("skip"):
            lines.append(f"{head} skipped: {r['skip']} | | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "n/a"
        ratio = f"{r['planned_gb'] / r['peak_gb']:.2f}" if r["peak_gb"] else "n/a"
        lines.append(f"{head} {r['tokens_per_s']:,.0f} | {r['step_s']:.3f} | {mfu} | {peak} | {r['planned_gb']:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, 2 steps (for the test suite)")
    p.add_argument("--out", type=Path, default=Path("bench_gpu.md"), help="markdown table to write")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--tiles", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    args = p.parse_args(argv)
    defaults = dict(batch=2, seq=64, tiles=1, steps=2, warmup=1) if args.smoke else dict(batch=2, seq=2048, tiles=4, steps=5, warmup=2)
    for k, val in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, val)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU (or --smoke for the CPU check)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = []
    for v in variants(args.smoke):
        if not v["skip"] and time.perf_counter() - started > BUDGET_S:
            v["skip"] = "time budget of the script spent"
        if not v["skip"]:
            try:
                v.update(run_one(v, args))
            except torch.OutOfMemoryError:
                v["skip"] = "out of memory"
                gc.collect()
                torch.cuda.empty_cache()
        rows.append(v)
        print({k: val for k, val in v.items()}, flush=True)
    measured = [r for r in rows if not r.get("skip")]
    device = measured[0]["device"] if measured else "n/a"
    text = (f"# bench/gpu.py\n\n{device}; torch {torch.__version__}; {platform.python_version()}; "
            f"{time.strftime('%Y-%m-%d')}; {time.perf_counter() - started:.0f} s in all.\n\n" + markdown(rows, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
