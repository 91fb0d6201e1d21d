"""Check a data config before training: what would go into the model, and what is wrong with the data.

    python -m internvl_exp.tools.data_check                          # the default config (data=demo)
    python -m internvl_exp.tools.data_check data=mix --show 3        # + render 3 samples, loss tokens highlighted
    python -m internvl_exp.tools.data_check data.meta_path=/data/meta.json data.generate_demo=false --decode

Takes the same Hydra overrides as launch.py (composed from conf/ with the same schema), runs the same
pre-flight scan as training, and reports per dataset: samples, skipped lines by reason, truncated samples,
token-length percentiles, tiles per sample, and tokens per epoch. Preference pairs (InternVL's MPO lines:
question / chosen / rejected; found from the lines, objective.kind, or --pairs) get their own report
(tools/data_check_pairs.py): every bad pair as file:line: reason, both answers' lengths, --show renders the prompt,
the chosen and the rejected answer. Exit status: 0 when training would
start, 1 when it would stop on bad data (data.on_error=strict) or find no usable sample, 2 on a config error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

from internvl_exp.config.validate import ConfigError, validate
from internvl_exp.data.sources import DataConfigError
from internvl_exp.errors import UserError
from internvl_exp.launch.precheck import compose_config
from internvl_exp.models.loading import load_tokenizer, native_checkpoint
from internvl_exp.models.resolve import resolve_weights
from internvl_exp.tools.data_check_pairs import check_pairs, objective_kind
from internvl_exp.tools.stats import percentile
from internvl_exp.tools.token_text import token_text
from internvl_exp.train.reporting.console_header import data_line

ROOT = Path(__file__).resolve().parents[2]  # the folder of launch.py and conf/

EPILOG = """\
overrides: any `key=value` or `group=option` that launch.py accepts, e.g.
  data=mix  model.max_dynamic_patch=12  data.max_seq_length=4096  data.length_policy=truncate
  data.on_error=skip  data.meta_path=/path/to/meta.json data.generate_demo=false

examples:
  python -m internvl_exp.tools.data_check data=mix --show 2
  python -m internvl_exp.tools.data_check data.meta_path=meta.json data.generate_demo=false --json report.json
  python -m internvl_exp.tools.data_check data=demo --decode        # also decode every image/video fully
  python -m internvl_exp.tools.data_check data.meta_path=mpo_meta.json data.generate_demo=false --show 2   # pairs

exit status: 0 ok, 1 bad data under data.on_error=strict (every problem is listed as file:line: reason)
or no usable sample, 2 invalid config.
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m internvl_exp.tools.data_check",
        description=(
            "Scan the datasets of a config exactly as training would (same composition, same pre-flight checks), and\n"
            "report per dataset: usable samples, skipped lines by reason (every problem as file:line: reason), truncated\n"
            "samples, token-length percentiles (p50/p95/max), tiles per sample, and estimated tokens per epoch."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for launch.py (key=value, group=option)")
    p.add_argument("--show", type=int, default=0, metavar="N", help="render N samples with the supervised tokens highlighted")
    p.add_argument("--show-from", type=int, default=0, metavar="I", help="index of the first sample --show renders (default 0)")
    p.add_argument("--decode", action="store_true", help="also load every sample's pixels (finds files that only fail on a full decode)")
    p.add_argument("--max-problems", type=int, default=50, metavar="N", help="problems to print (all go to --json); default 50")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the full report (every problem included) as JSON")
    p.add_argument("--pairs", action="store_true",
                   help="check the data as preference pairs (question/chosen/rejected); found from the lines or "
                        "objective.kind otherwise")
    p.add_argument("--config-dir", type=Path, default=ROOT / "conf", help="config tree to compose from (default: the repo's conf/)")
    return p.parse_intermixed_args(argv)  # overrides may come before or after the options


def dataset_stats(entries, dataset, report) -> list[dict[str, Any]]:
    """One row per dataset (plus a total): counts, and lengths/tiles/tokens over the samples of one epoch."""
    import numpy as np

    plan = dataset.plan
    order = dataset.epoch_order()
    ds_of = np.asarray(plan.rows["dataset"])[order]
    lengths_all = np.asarray(plan.rows["length"])[order]
    frames = np.asarray(plan.rows["frames"])[order]
    n_images = np.asarray(plan.rows["n_images"])[order]
    tiles_all = np.array([sum(plan.tiles_of(int(r))) for r in order], dtype=np.int64)
    truncated = np.asarray(plan.rows["truncated"])[order]
    skipped: dict[str, Counter] = defaultdict(Counter)
    for p in report.problems:
        skipped[p.dataset][p.reason] += 1

    def row(name: str, mask, usable: int, skip: Counter) -> dict[str, Any]:
        lengths = lengths_all[mask]
        tiles = tiles_all[mask]
        return {
            "dataset": name,
            "samples": usable,
            "in_epoch": int(mask.sum()),
            "images": int(n_images[mask].sum()),
            "videos": int((frames[mask] > 0).sum()),
            "skipped": dict(skip),
            "truncated": int(truncated[mask].sum()),
            "length_p50": percentile(lengths, 50),
            "length_p95": percentile(lengths, 95),
            "length_max": int(lengths.max()) if len(lengths) else 0,
            "tiles_mean": round(float(tiles.mean()), 2) if len(tiles) else 0.0,
            "tiles_max": int(tiles.max()) if len(tiles) else 0,
            "tokens_per_epoch": int(lengths_all[mask].sum()),
        }

    rows = [row(e.name, ds_of == d, report.per_dataset[e.name], skipped[e.name]) for d, e in enumerate(entries)]
    total_skip = sum(skipped.values(), Counter())
    rows.append(row("total", np.ones(len(order), dtype=bool), sum(report.per_dataset.values()), total_skip))
    return rows


def render_sample(console, sample, item, tokenizer, index: int) -> None:
    """The sample's tokens as text: supervised tokens in bold green, image spans collapsed."""
    from rich.panel import Panel
    from rich.text import Text

    marks = not console.is_terminal  # no colours when piped: bracket the supervised stretches instead
    text = token_text(item["input_ids"].tolist(), item["labels"].tolist(), tokenizer, marks)
    media = f"{len(sample.images)} image(s)" if sample.images else (f"video, {sample.num_frames} frame(s)" if sample.video else "text only")
    pixels = item.get("pixel_tiles")
    title = (
        f"sample {index} · {sample.line.where} · {sample.length} tokens · {media} · "
        f"{0 if pixels is None else pixels.shape[0]} tile(s){' · truncated' if sample.truncated else ''}"
    )
    legend = Text("[[supervised]], the rest masked") if marks else Text.from_markup("[bold green]supervised[/] [dim]masked[/]")
    console.print(Panel(text, title=title, title_align="left", subtitle=legend))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_config(args.overrides, args.config_dir)
        validate(cfg)
    except (ConfigError, HydraException, OmegaConfBaseException) as e:  # bad key, type, group option or rule
        console.print(f"config error: {e}", markup=False, style="red")
        return 2

    from internvl_exp.data.dataset import fatal_problems, length_drop_problems, scan
    from internvl_exp.data.from_config import dataset_entries, image_settings, scan_options

    try:
        weights = resolve_weights(cfg)
    except UserError as e:  # no weights on this machine, or not the preset's checkpoint
        console.print(f"model error: {e}", markup=False, style="red")
        return 2
    tokenizer = load_tokenizer(cfg.model, native_checkpoint(weights, Path(cfg.paths.cache_dir), cfg.model.random_init))
    n_tok = cfg.resolved.tokens_per_tile
    settings = image_settings(cfg, n_tok)
    d = cfg.data
    from internvl_exp.data.preference_data import is_preference_data, pair_entries

    pair_objective = objective_kind(cfg) in ("dpo", "mpo")
    try:  # a preference objective reads its data as training does (data=demo_pref generates the pair demo)
        entries = pair_entries(cfg) if pair_objective else dataset_entries(cfg)
    except DataConfigError as e:
        console.print(f"data config error: {e}", markup=False, style="red")
        return 2
    if args.pairs or pair_objective or is_preference_data(entries):
        return check_pairs(console, args, cfg, entries, tokenizer, n_tok)
    opts = scan_options(cfg)
    dataset, report = scan(entries, tokenizer, cfg.model.template, settings, d.max_seq_length, d.length_policy,
                           d.system_message, d.seed, opts["scan_workers"], opts["cache_dir"])
    dataset.on_error = "skip"
    epoch = dataset.samples

    console.print(data_line(cfg), markup=False, soft_wrap=True)  # where the data (and the eval data) come from
    console.print(
        f"template={cfg.model.template} tile={settings.tile_size}px "
        f"tokens/tile={n_tok} max_dynamic_patch={settings.max_dynamic_patch} max_seq_length={d.max_seq_length} "
        f"length_policy={d.length_policy} on_error={d.on_error}"
    )
    rows = dataset_stats(entries, dataset, report)
    counts = Table(title="samples per dataset", title_justify="left")
    lengths = Table(title="tokens and tiles per sample", title_justify="left")
    for col in ("dataset", "usable", "in epoch", "skipped", "truncated", "images", "videos"):
        counts.add_column(col, justify="left" if col == "dataset" else "right")
    for col in ("dataset", "len p50", "len p95", "len max", "tiles mean", "tiles max", "tokens/epoch"):
        lengths.add_column(col, justify="left" if col == "dataset" else "right")
    for r in rows:
        last = r["dataset"] == rows[-2]["dataset"]
        counts.add_row(r["dataset"], str(r["samples"]), str(r["in_epoch"]), str(sum(r["skipped"].values())), str(r["truncated"]),
                       str(r["images"]), str(r["videos"]), end_section=last)
        lengths.add_row(r["dataset"], str(r["length_p50"]), str(r["length_p95"]), str(r["length_max"]), f"{r['tiles_mean']:.2f}",
                        str(r["tiles_max"]), f"{r['tokens_per_epoch']:,}", end_section=last)
    console.print(counts)
    console.print(lengths)
    for r in rows[:-1]:
        if r["skipped"]:
            console.print(f"  {r['dataset']}: skipped by reason {dict(sorted(r['skipped'].items()))}", markup=False)
    console.print(
        f"epoch: {report.samples} samples, {report.tokens:,} tokens ({report.supervised_tokens:,} supervised), before padding"
        + (f"; mixture weights give {report.mixture}" if report.mixture else "")
    )
    missing = report.skipped.get("missing_media", 0)
    corrupt = report.skipped.get("corrupt_media", 0) + report.skipped.get("video_unreadable", 0)
    console.print(f"media: {missing} line(s) with missing files, {corrupt} with corrupt/unreadable files")
    if report.exif_rotated:
        console.print(f"exif: {report.exif_note()}", markup=False)

    load_failures: dict[str, int] = {}
    failed: list[str] = []  # "file:line: reason: detail" of each sample that fails a full decode
    if args.decode and len(epoch):
        import logging

        dataset_log = logging.getLogger("internvl_exp.data.dataset")
        level = dataset_log.level
        dataset_log.setLevel(logging.ERROR)  # one warning per failure is noise here: they are listed below
        try:
            # Each distinct planned line once (repeat_time copies are the same line).
            for row in range(len(dataset.plan)):
                try:
                    dataset.load_row(row)
                except Exception as e:  # noqa: BLE001 - listed below with its reason
                    reason = getattr(e, "reason", "corrupt_media")
                    load_failures[reason] = load_failures.get(reason, 0) + 1
                    # As training words it: file:line: reason: what the decoder said ("image file is truncated").
                    failed.append(f"{dataset.sample_of_row(row).line.where}: {reason}: {e}")
        finally:
            dataset_log.setLevel(level)
        console.print(f"decode: {len(dataset.plan) - len(failed)} of {len(dataset.plan)} samples load; failures {load_failures or 'none'}")
        for failure in failed[: args.max_problems]:
            console.print(f"  {failure}", markup=False, soft_wrap=True)

    fatal = fatal_problems(report)
    if report.problems:
        console.print(f"[yellow]{len(report.problems)} line(s) skipped[/] by reason: {dict(report.skipped)}")
        for p in report.problems[: args.max_problems]:
            console.print(f"  {p}", markup=False, soft_wrap=True)  # one line each: paths stay copy-pasteable
        if len(report.problems) > args.max_problems:
            console.print(f"  ... and {len(report.problems) - args.max_problems} more (--max-problems N, or --json PATH for all)")

    if args.show and len(epoch):
        for i in range(args.show_from, min(len(epoch), args.show_from + args.show)):
            item = dataset[i]  # a sample that fails to load is replaced by the next one (counted in the warning)
            render_sample(console, epoch[i], item, tokenizer, i)

    status = 0
    too_lossy = length_drop_problems(report, dataset._sizes, d.max_drop_share, d.max_seq_length, d.length_policy)
    if not len(dataset.plan):
        console.print("[red]no usable samples[/]: training would stop")
        status = 1
    elif too_lossy:
        console.print(f"[red]training would stop before the model loads[/]: {too_lossy}", markup=True, soft_wrap=True)
        status = 1
    elif fatal and d.on_error == "strict":
        console.print(f"[red]{len(fatal)} problem(s): training would stop (data.on_error=strict)[/]; fix them or set data.on_error=skip")
        status = 1
    elif load_failures and d.on_error == "strict":
        console.print(f"[red]{sum(load_failures.values())} sample(s) fail to load: training would stop when it reaches them[/]")
        status = 1
    else:
        console.print("[green]ok[/]: training would start")

    if args.json:
        out = {
            "config": {"data": d.name, "template": cfg.model.template, "tokens_per_tile": n_tok, "max_seq_length": d.max_seq_length,
                       "length_policy": d.length_policy, "on_error": d.on_error},
            "datasets": rows,
            "report": report.as_dict(),
            "load_failures_by_reason": load_failures,
            "load_failures": failed,
            "problems": [{"where": p.where, "reason": p.reason, "detail": p.detail} for p in report.problems],
            "exit_status": status,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    return status


if __name__ == "__main__":
    from internvl_exp.shutdown import skip_final_collection

    skip_final_collection()
    sys.exit(main())
