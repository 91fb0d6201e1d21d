"""data_check for preference pairs (InternVL's MPO format: question / chosen / rejected): every line planned by the
PreferenceEncoder that training uses, every bad pair reported as `file:line: reason: detail` (the reasons of
data/preference.py REASONS), lengths of both answers, and `--show` rendering the shared prompt, the chosen and the
rejected answer with their supervised tokens marked.

Called by tools/data_check.py when the data are pairs (detected from the lines, an `objective.kind` other than sft,
or `--pairs`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from internvl_exp.config.schema import Config
from internvl_exp.data.preference_scan import cached_scan
from internvl_exp.tools.stats import percentile
from internvl_exp.tools.token_text import token_text
from internvl_exp.train.reporting.console_header import data_line

PAIR_REASONS_FATAL_UNDER_STRICT = frozenset({"invalid_json", "bad_pair", "bad_media_field", "image_count_mismatch",
                                             "missing_media", "corrupt_media"})  # too_long is always a skip


def objective_kind(cfg: Config) -> str | None:
    """`objective.kind` when the config has the objective group (sft | dpo | mpo), else None."""
    objective = cfg.get("objective") if hasattr(cfg, "get") else None
    kind = objective.get("kind") if objective is not None and hasattr(objective, "get") else None
    return str(kind) if kind else None


def scan_pairs(entries: list, encoder: Any, cache_dir: str | None = None, workers: int | None = 1) -> dict[str, Any]:
    """Every line planned by training's scan (data/preference_scan.py, cached and shared with training under
    `cache_dir`): per usable pair only integers in packed arrays, with where to re-read it (`--show`,
    `--decode`); every problem with its file:line."""
    scan, _ = cached_scan(entries, encoder, cache_dir, workers)
    r = scan.rows
    rows = {"dataset": r["dataset"], "line_no": r["line_no"], "offset": r["offset"], "nbytes": r["nbytes"],
            "chosen": r["chosen_length"], "rejected": r["rejected_length"], "tiles": r["tiles"], "images": r["images"],
            "sup_chosen": r["chosen_supervised"], "sup_rejected": r["rejected_supervised"]}
    skipped: list[Counter] = [Counter() for _ in entries]
    problems = []
    for p in scan.problems:
        skipped[p["dataset"]][p["reason"]] += 1
        problems.append({"where": f"{entries[p['dataset']].annotation}:{p['line_no']}", "reason": p["reason"],
                         "detail": p["detail"], "dataset": p["dataset"]})
    return {"rows": rows, "skipped": skipped, "problems": problems}


def dataset_rows(entries: list, scanned: dict[str, Any]) -> list[dict[str, Any]]:
    r = scanned["rows"]
    out = []
    for d, entry in enumerate(entries):
        m = r["dataset"] == d
        c, rej, t, img = r["chosen"][m], r["rejected"][m], r["tiles"][m], r["images"][m]
        out.append({"dataset": entry.name, "pairs": int(m.sum()), "skipped": dict(scanned["skipped"][d]),
                    "images": int(img.sum()), "text_only": int((img == 0).sum()),
                    "chosen_p50": percentile(c, 50), "chosen_max": int(c.max()) if len(c) else 0,
                    "rejected_p50": percentile(rej, 50), "rejected_max": int(rej.max()) if len(rej) else 0,
                    "longer_p95": percentile(np.maximum(c, rej), 95), "tiles_max": int(t.max()) if len(t) else 0,
                    "supervised_chosen": int(r["sup_chosen"][m].sum()),
                    "supervised_rejected": int(r["sup_rejected"][m].sum())})
    return out


def _reread(entries: list, rows: dict[str, np.ndarray], i: int) -> tuple[Any, str, str]:
    """(entry, file:line, text) of usable pair i, read again from its file."""
    entry = entries[int(rows["dataset"][i])]
    with open(entry.annotation, "rb") as f:
        f.seek(int(rows["offset"][i]))
        raw = f.read(int(rows["nbytes"][i]))
    return entry, f"{entry.annotation}:{int(rows['line_no'][i])}", raw.decode("utf-8")


def render_pair(console: Any, item: dict[str, Any], tokenizer: Any, title: str) -> None:
    """The prompt both answers share, then each answer with its supervised tokens marked."""
    from rich.panel import Panel
    from rich.text import Text

    marks = not console.is_terminal
    ids = {s: item[f"{s}_input_ids"].tolist() for s in ("chosen", "rejected")}
    labels = {s: item[f"{s}_labels"].tolist() for s in ("chosen", "rejected")}
    shared = 0  # the prompt: the common unsupervised prefix (an answer's first supervised token ends it)
    while (shared < min(len(ids["chosen"]), len(ids["rejected"])) and ids["chosen"][shared] == ids["rejected"][shared]
           and labels["chosen"][shared] == labels["rejected"][shared] == -100):
        shared += 1
    body = Text()
    body.append("prompt: ", style="bold")
    body.append_text(token_text(ids["chosen"][:shared], labels["chosen"][:shared], tokenizer, marks))
    for side in ("chosen", "rejected"):
        n_sup = sum(1 for x in labels[side][1:] if x != -100)  # counted as the loss counts them (shifted)
        body.append(f"\n{side} ({len(ids[side])} tokens, {n_sup} supervised): ", style="bold")
        body.append_text(token_text(ids[side][shared:], labels[side][shared:], tokenizer, marks))
    tiles = item.get("pixel_tiles")
    legend = Text("[[supervised]], the rest masked") if marks else Text.from_markup("[bold green]supervised[/] [dim]masked[/]")
    console.print(Panel(body, title=f"{title} · {0 if tiles is None else tiles.shape[0]} tile(s)", title_align="left",
                        subtitle=legend))


def check_pairs(console: Any, args: Any, cfg: Config, entries: list, tokenizer: Any, n_tok: int) -> int:
    """The preference data report; the exit status as for SFT data (0 ok, 1 training would stop on the data)."""
    from rich.table import Table

    from internvl_exp.data.preference_data import preference_encoder

    d = cfg.data
    encoder = preference_encoder(cfg, tokenizer, n_tok)
    scanned = scan_pairs(entries, encoder, cfg.paths.cache_dir if d.plan_cache else None, d.scan_workers)
    rows = dataset_rows(entries, scanned)
    kind = objective_kind(cfg)
    console.print(data_line(cfg), markup=False, soft_wrap=True)  # where the data (and the eval data) come from
    console.print(f"preference pairs (question / chosen / rejected): template={cfg.model.template} "
                  f"tile={encoder.settings.tile_size}px tokens/tile={n_tok} max_dynamic_patch="
                  f"{encoder.settings.max_dynamic_patch} max_seq_length={d.max_seq_length} on_error={d.on_error}"
                  + (f" objective={kind}" if kind else ""), markup=False)
    if kind == "sft":
        console.print("note: these are preference pairs but objective.kind is sft; train them with objective=mpo "
                      "or objective=dpo", markup=False)
    counts = Table(title="pairs per dataset", title_justify="left")
    lengths = Table(title="tokens per pair (chosen, rejected, the longer of the two) and tiles", title_justify="left")
    for col in ("dataset", "pairs", "skipped", "images", "text only"):
        counts.add_column(col, justify="left" if col == "dataset" else "right", overflow="fold")
    for col in ("dataset", "chosen p50", "chosen max", "rejected p50", "rejected max", "longer p95", "tiles max"):
        lengths.add_column(col, justify="left" if col == "dataset" else "right", overflow="fold")
    for r in rows:
        counts.add_row(r["dataset"], str(r["pairs"]), str(sum(r["skipped"].values())), str(r["images"]),
                       str(r["text_only"]))
        lengths.add_row(r["dataset"], str(r["chosen_p50"]), str(r["chosen_max"]), str(r["rejected_p50"]),
                        str(r["rejected_max"]), str(r["longer_p95"]), str(r["tiles_max"]))
    console.print(counts)
    console.print(lengths)
    problems = scanned["problems"]
    by_reason = Counter(p["reason"] for p in problems)
    pairs = sum(r["pairs"] for r in rows)
    console.print(f"{pairs} usable pair(s); a pair is kept or dropped whole (never truncated)"
                  + (f"; skipped by reason: {dict(sorted(by_reason.items()))}" if problems else ""), markup=False)
    for p in problems[: args.max_problems]:
        console.print(f"  {p['where']}: {p['reason']}: {p['detail']}", markup=False, soft_wrap=True)
    if len(problems) > args.max_problems:
        console.print(f"  ... and {len(problems) - args.max_problems} more (--max-problems N, or --json PATH for all)")

    failed: list[str] = []
    load_failures: Counter[str] = Counter()
    if args.decode or args.show:
        from PIL import Image

        from internvl_exp.data.preference import PairSkip

        n_usable = len(scanned["rows"]["dataset"])
        todo = range(n_usable) if args.decode else range(args.show_from, min(n_usable, args.show_from + args.show))
        for i in todo:
            entry, where, text = _reread(entries, scanned["rows"], i)
            try:
                item = encoder.load(entry, encoder.plan(entry, text))
            except (PairSkip, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                reason = getattr(e, "reason", "corrupt_media")
                load_failures[reason] += 1
                failed.append(f"{where}: {reason}: {e}")
                continue
            if args.show_from <= i < args.show_from + args.show:
                render_pair(console, item, tokenizer, f"pair {i} · {where}")
        if args.decode:
            console.print(f"decode: {n_usable - len(failed)} of {n_usable} pairs load; "
                          f"failures {dict(load_failures) or 'none'}")
            for f in failed[: args.max_problems]:
                console.print(f"  {f}", markup=False, soft_wrap=True)

    fatal = [p for p in problems if p["reason"] in PAIR_REASONS_FATAL_UNDER_STRICT]
    if not pairs:
        console.print("[red]no usable pairs[/]: training would stop")
        status = 1
    elif fatal and d.on_error == "strict":
        console.print(f"[red]{len(fatal)} problem(s): training would stop (data.on_error=strict)[/]; fix them or set "
                      "data.on_error=skip")
        status = 1
    elif load_failures and d.on_error == "strict":
        console.print(f"[red]{sum(load_failures.values())} pair(s) fail to load: training would stop when it reaches "
                      "them[/]")
        status = 1
    else:
        console.print("[green]ok[/]: training would start")
        status = 0
    if args.json:
        out = {"kind": "preference",
               "config": {"data": d.name, "template": cfg.model.template, "tokens_per_tile": n_tok,
                          "max_seq_length": d.max_seq_length, "on_error": d.on_error},
               "datasets": rows, "problems": [{k: p[k] for k in ("where", "reason", "detail")} for p in problems],
               "load_failures": failed, "exit_status": status}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    return status
