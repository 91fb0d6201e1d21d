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

from internvl_exp.tools.data_check import percentile, token_text

PAIR_REASONS_FATAL_UNDER_STRICT = frozenset({"invalid_json", "bad_pair", "bad_media_field", "image_count_mismatch",
                                             "missing_media", "corrupt_media"})  # too_long is always a skip


def objective_kind(cfg: Any) -> str | None:
    """`objective.kind` when the config has the objective group (sft | dpo | mpo), else None."""
    objective = cfg.get("objective") if hasattr(cfg, "get") else None
    kind = objective.get("kind") if objective is not None and hasattr(objective, "get") else None
    return str(kind) if kind else None


def scan_pairs(entries: list, encoder: Any) -> dict[str, Any]:
    """Plan every line of every data set as training's PreferenceDataset does, keeping what the report needs:
    per data set the usable pairs' lengths and tiles, and every problem with its file:line."""
    from internvl_exp.data.preference import PairSkip, _lines

    datasets, problems, usable = [], [], []
    for d, entry in enumerate(entries):
        stats: dict[str, Any] = {"dataset": entry.name, "pairs": 0, "skipped": Counter(), "images": 0,
                                 "text_only": 0, "chosen_lengths": [], "rejected_lengths": [], "tiles": [],
                                 "supervised_chosen": 0, "supervised_rejected": 0}
        for line_no, _, raw in _lines(entry.annotation):
            where = f"{entry.annotation}:{line_no}"
            try:
                pair = encoder.plan(entry, raw.decode("utf-8"))
            except UnicodeDecodeError:
                stats["skipped"]["invalid_json"] += 1
                problems.append({"where": where, "reason": "invalid_json", "detail": "not UTF-8 text", "dataset": d})
                continue
            except PairSkip as e:
                stats["skipped"][e.reason] += 1
                problems.append({"where": where, "reason": e.reason, "detail": e.detail, "dataset": d})
                continue
            stats["pairs"] += 1
            stats["images"] += len(pair.images)
            stats["text_only"] += not pair.images
            stats["chosen_lengths"].append(pair.lengths[0])
            stats["rejected_lengths"].append(pair.lengths[1])
            stats["tiles"].append(sum(pair.tiles))
            stats["supervised_chosen"] += pair.supervised[0]
            stats["supervised_rejected"] += pair.supervised[1]
            usable.append((d, line_no, raw, pair))
        datasets.append(stats)
    return {"datasets": datasets, "problems": problems, "usable": usable}


def _row(stats: dict[str, Any]) -> dict[str, Any]:
    c, r, t = stats["chosen_lengths"], stats["rejected_lengths"], stats["tiles"]
    return {"dataset": stats["dataset"], "pairs": stats["pairs"], "skipped": dict(stats["skipped"]),
            "images": stats["images"], "text_only": stats["text_only"],
            "chosen_p50": percentile(c, 50), "chosen_max": max(c, default=0),
            "rejected_p50": percentile(r, 50), "rejected_max": max(r, default=0),
            "longer_p95": percentile([max(a, b) for a, b in zip(c, r)], 95),
            "tiles_max": max(t, default=0), "supervised_chosen": stats["supervised_chosen"],
            "supervised_rejected": stats["supervised_rejected"]}


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


def check_pairs(console: Any, args: Any, cfg: Any, entries: list, tokenizer: Any, n_tok: int) -> int:
    """The preference data report; the exit status as for SFT data (0 ok, 1 training would stop on the data)."""
    from rich.table import Table

    from internvl_exp.data.preference_from_config import preference_encoder

    d = cfg.data
    encoder = preference_encoder(cfg, tokenizer, n_tok)
    scanned = scan_pairs(entries, encoder)
    rows = [_row(s) for s in scanned["datasets"]]
    kind = objective_kind(cfg)
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

        todo = range(len(scanned["usable"])) if args.decode else range(args.show_from, args.show_from + args.show)
        shown = 0
        for i in todo:
            if i >= len(scanned["usable"]):
                break
            dataset_index, line_no, raw, pair = scanned["usable"][i]
            entry = entries[dataset_index]
            where = f"{entry.annotation}:{line_no}"
            try:
                item = encoder.load(entry, pair)
            except (PairSkip, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                reason = getattr(e, "reason", "corrupt_media")
                load_failures[reason] += 1
                failed.append(f"{where}: {reason}: {e}")
                continue
            if args.show_from <= i < args.show_from + args.show:
                render_pair(console, item, tokenizer, f"pair {i} · {where}")
                shown += 1
        if args.decode:
            console.print(f"decode: {len(scanned['usable']) - len(failed)} of {len(scanned['usable'])} pairs load; "
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
