"""Score preference pairs: the summed log-probs of every pair's chosen and rejected answer under a model (and a
reference), one JSON line per pair.

    python -m internvl_exp.tools.score_pairs outputs/default/<run> --out scores.jsonl data.meta_path=pairs.json
    python -m internvl_exp.tools.score_pairs POLICY_DIR --reference REF_DIR --out scores.jsonl model=local ...
    torchrun --nproc_per_node 8 -m internvl_exp.tools.score_pairs RUN --out scores.jsonl ...   # every rank scores

The pairs are read through the same scan as MPO training (data.on_error, max_seq_length, tiling, template); the
pass is objectives/reference_logps.py `score`, the one training uses to precompute reference log-probs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from internvl_exp import dist as ranks
from internvl_exp.config.geometry import tokens_per_tile
from internvl_exp.config.schema import Config
from internvl_exp.errors import UserError
from internvl_exp.inference.load import load_for_inference
from internvl_exp.launch.precheck import compose_config
from internvl_exp.models.convert import ensure_converted, is_original_layout
from internvl_exp.objectives.reference_logps import rank_share, score_distributed
from internvl_exp.tools.predict import compose_for

EPILOG = """\
MODEL and REF are each one of:
  a run directory        outputs/<experiment>/<run_name> (its final/: full fine-tune or LoRA adapter)
  a model directory      a run's final/, a native or an original-layout (OpenGVLab) checkpoint, converted once
                         into paths.cache_dir
  a preset name          internvl2_5_8b, ... (its weights found on this machine as a run finds them)
The data and the settings the pairs are read with come from the Hydra overrides, as for launch.py; a run
directory's own model settings (template, tiling) are used for it. The config's tile geometry (model.image_size,
patch_size, downsample_ratio) must match the model's: e.g. `model=local model.image_size=56` for a 56-px checkpoint.

output (--out, one JSON object per line, in data order: meta order, then jsonl line order; each line once,
whatever its repeat_time; lines the scan skips are not written):
  dataset, line (1-based line of its jsonl), chosen_logp, rejected_logp (summed log-probs of the supervised
  tokens), chosen_tokens, rejected_tokens (supervised token counts); with --reference also
  reference_chosen_logp, reference_rejected_logp, and margin = (chosen_logp - reference_chosen_logp)
  - (rejected_logp - reference_rejected_logp), the DPO reward margin divided by beta.
Images are scored without data_augment's random JPEG degradation.

several processes (torchrun, or distributed launch variables RANK/WORLD_SIZE/MASTER_ADDR): each rank scores a
contiguous share of the pairs and rank 0 writes the one file.

examples:
  python -m internvl_exp.tools.score_pairs outputs/default/sft --out s.jsonl data.meta_path=mpo_meta.json data.generate_demo=false
  python -m internvl_exp.tools.score_pairs ckpt/policy --reference ckpt/ref --batch-size 8 --out s.jsonl \\
      model=local model.image_size=56 data.meta_path=meta.json data.generate_demo=false
"""

FIELDS = ("dataset", "line", "chosen_logp", "rejected_logp", "chosen_tokens", "rejected_tokens")
REFERENCE_FIELDS = ("reference_chosen_logp", "reference_rejected_logp", "margin")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m internvl_exp.tools.score_pairs",
        description="Score every preference pair (MPO/DPO data) of a config: the summed log-probs and supervised "
                    "token counts of its chosen and rejected answers under MODEL and, with --reference, under REF "
                    "and their margin. For inspecting or filtering pairs before preference training.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="MODEL", help="run directory, model directory or preset name")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for launch.py (data.meta_path=..., model=...)")
    p.add_argument("--reference", metavar="REF", default=None, help="a second model scored on the same batches")
    p.add_argument("--out", type=Path, required=True, help="output jsonl (written by rank 0)")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per forward (default 4; 2 sequences each)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available; cuda:LOCAL_RANK per rank)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="dtype to load the weights in (default: as saved)")
    args = p.parse_intermixed_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return _score(args)
    except (UserError, HydraException, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _init_distributed(device: str | None) -> str | None:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPUs); the device this rank uses."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return f"cuda:{local}" if cuda else (device or "cpu")


def load_target(target: str, cfg: Config, device: str | None, dtype: str | None) -> Any:
    """load_for_inference, with an original-layout model directory converted into the config's paths.cache_dir."""
    path = Path(target)
    if path.is_dir() and not (path / "final").is_dir() and is_original_layout(path):
        target = str(ensure_converted(path, Path(cfg.paths.cache_dir)))
    return load_for_inference(target, device, dtype)


def check_geometry(cfg: Config, model: Any, name: str) -> None:
    """The config tiles images for the model: its tile size and image tokens per tile are the model's."""
    config = model.config
    vision = config.vision_config
    size = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
    patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
    theirs = (int(size), tokens_per_tile(int(size), int(patch), float(config.downsample_ratio)))
    ours = (int(cfg.model.image_size), int(cfg.resolved.tokens_per_tile))
    if theirs != ours:
        raise UserError(f"{name}: the model's tiles are {theirs[0]} px / {theirs[1]} image tokens, but the config "
                        f"tiles images at {ours[0]} px / {ours[1]} tokens (model={cfg.model.name}); set "
                        f"model.image_size={theirs[0]} (patch_size, downsample_ratio likewise) or the model's preset")


def records(scores: dict[str, Any], names: Sequence[str], with_reference: bool):
    """One dict per scored pair (pairs that failed to load under on_error=skip have NaN log-probs: left out)."""
    import math

    for i in range(len(scores["row"])):
        pc, pr = float(scores["chosen_logp"][i]), float(scores["rejected_logp"][i])
        if math.isnan(pc) or math.isnan(pr):
            continue
        rec = {"dataset": names[int(scores["dataset"][i])], "line": int(scores["line"][i]), "chosen_logp": pc,
               "rejected_logp": pr, "chosen_tokens": int(scores["chosen_tokens"][i]),
               "rejected_tokens": int(scores["rejected_tokens"][i])}
        if with_reference:
            rc, rr = float(scores["reference_chosen_logp"][i]), float(scores["reference_rejected_logp"][i])
            rec.update(reference_chosen_logp=rc, reference_rejected_logp=rr, margin=(pc - rc) - (pr - rr))
        yield rec


def _score(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from internvl_exp.data.preference_data import build_pairs

    device = _init_distributed(args.device)
    main_process = ranks.is_main_process()
    base = compose_config(list(args.overrides))
    policy = load_target(args.target, base, device, args.dtype)
    cfg = compose_for(policy, args.overrides)
    check_geometry(cfg, policy.model, args.target)
    reference = None
    if args.reference:
        reference = load_target(args.reference, cfg, device, args.dtype)
        check_geometry(cfg, reference.model, args.reference)
    if main_process:
        print(f"loaded {policy.source} (template {cfg.model.template})"
              + (f", reference {reference.source}" if reference else ""), file=sys.stderr)
    dataset = build_pairs(cfg, policy.processor.tokenizer, cfg.resolved.tokens_per_tile)
    n = len(dataset.rows["dataset"])
    world = ranks.world_size()
    share = len(rank_share(n, ranks.rank(), world))
    desc = "score_pairs" + (f" (rank 0's {share} of {n} pairs, {world} ranks)" if world > 1 else "")
    with tqdm(total=share, desc=desc, unit="pair", disable=not main_process) as bar:
        scores = score_distributed(policy.model, dataset, args.batch_size,
                                   reference.model if reference else None, bar.update)
    if scores is not None:
        names = [e.name for e in dataset.entries]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + f".partial-{os.getpid()}")
        written = 0
        with open(tmp, "w") as f:
            for rec in records(scores, names, reference is not None):
                f.write(json.dumps(rec) + "\n")
                written += 1
        os.replace(tmp, args.out)
        skipped = dict(dataset.skipped)
        failed = len(scores["row"]) - written  # on any rank (data.on_error=skip): their log-probs are NaN
        print(f"{written} pairs scored -> {args.out}"
              + (f"; skipped by the scan: {skipped}" if skipped else "")
              + (f"; {failed} failed to load (changed since the scan; data.on_error=skip)" if failed else ""),
              file=sys.stderr)
    ranks.leave_process_group()
    return 0


if __name__ == "__main__":
    from internvl_exp.shutdown import finish

    finish(main)
