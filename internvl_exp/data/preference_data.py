"""Preference pairs from a composed config (objective dpo | mpo): the same data keys as SFT data.

`data.meta_path` / `data.datasets` name InternVL MPO-format datasets (data/preference.py); the template, tiling,
max_seq_length, `data.on_error` (strict: every bad line as file:line, or skip and count) and the length policy
apply as for SFT, except that a pair longer than max_seq_length is dropped whole, never truncated, and
`data.max_drop_share` stops the run when the drops take too large a share of a dataset. Eval pairs come from
`data.eval` or a held-out share of the training lines (`data.eval_fraction`: the same line hash as SFT,
data/eval_data.py, so a held-out pair never trains).

This is the one place a PreferenceDataset is built from a config: training (train/recipe/run.py),
tools/score_pairs.py and tools/data_check.py all come here, so they see the same pairs for the same overrides.
Whether a data set holds pairs is read from its lines (`is_preference_data`): a line with question/chosen/rejected
is a pair, one with conversations is SFT.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from internvl_exp.config.eval_settings import has_eval_datasets
from internvl_exp.config.schema import Config
from internvl_exp.data.dataset import DataError
from internvl_exp.data.demo_pref import generate_pair_demo
from internvl_exp.data.eval_data import eval_entries, line_draws
from internvl_exp.data.from_config import image_settings, scan_options
from internvl_exp.data.preference import PreferenceDataset, PreferenceEncoder
from internvl_exp.data.report import DataReport
from internvl_exp.data.sources import DatasetEntry, load_entries

log = logging.getLogger(__name__)


def preference_report(dataset: PreferenceDataset) -> DataReport:
    """The data report of a pair dataset: pairs per epoch, per dataset; tokens count both sequences."""
    report = DataReport()
    report.samples = len(dataset)
    report.per_dataset = {e.name: int(n) for e, n in
                          zip(dataset.entries, np.bincount(dataset.rows["dataset"][dataset.epoch_order()],
                                                           minlength=len(dataset.entries)))}
    order = dataset.epoch_order()
    report.tokens = int(dataset.rows["chosen_length"][order].sum() + dataset.rows["rejected_length"][order].sum())
    report.skipped.update(dataset.skipped)
    report.dropped_too_long = dict(dataset.too_long)
    report.load_failures = dataset.load_failures  # the dataset's shared counters: metrics.json sums them over ranks
    report.plan_source = dataset.scan_source
    return report


def _drop_problem(dataset: PreferenceDataset, max_share: float, max_seq_length: int) -> str | None:
    """The message that stops the run when the length policy drops more than `max_share` of a dataset's pairs."""
    usable = dict(zip([e.name for e in dataset.entries], np.bincount(dataset.rows["dataset"],
                                                                      minlength=len(dataset.entries)).tolist()))
    over = []
    for name, n in dataset.too_long.items():
        lines = usable.get(name, 0) + n  # usable + dropped as too long (pairs skipped for other reasons not counted)
        if usable.get(name, 0) == 0 or n / lines > max_share:
            over.append(f"{name}: {n:,} of {lines:,} pairs ({n / lines:.0%}) have a side longer than "
                        f"data.max_seq_length={max_seq_length}")
    if not over:
        return None
    return ("the length policy would drop too many preference pairs (a pair is dropped whole; data.max_drop_share="
            f"{max_share:g}):\n  " + "\n  ".join(over) + "\nfix: raise data.max_seq_length, or lower "
            "model.max_dynamic_patch, or accept the loss with data.max_drop_share=1")


def pair_entries(cfg: Config) -> list[DatasetEntry]:
    """The training datasets of a preference run; `data.generate_demo` writes the pair demo (data=demo_pref) to
    `<paths.demo_data_dir>_pref` first."""
    from omegaconf import OmegaConf

    if cfg.data.generate_demo:
        generate_pair_demo(f"{cfg.paths.demo_data_dir}_pref")
    inline = OmegaConf.to_container(cfg.data.datasets, resolve=True) if cfg.data.datasets else None
    return load_entries(cfg.data.meta_path, inline)


def first_line_kind(entry: DatasetEntry, max_lines: int = 50) -> str | None:
    """'preference' or 'sft' from the first parseable line of `entry`'s annotation (None: none parses)."""
    try:
        with open(entry.annotation, "rb") as f:
            for i, raw in enumerate(f):
                if i >= max_lines:
                    break
                try:
                    obj = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    if "conversations" in obj:
                        return "sft"
                    if any(k in obj for k in ("chosen", "rejected")):
                        return "preference"
    except OSError:
        return None
    return None


def is_preference_data(entries: list[DatasetEntry]) -> bool:
    """True when the data sets' lines are pairs (the first data set whose lines can be read decides)."""
    for entry in entries:
        kind = first_line_kind(entry)
        if kind is not None:
            return kind == "preference"
    return False


def preference_encoder(cfg: Config, tokenizer: Any, num_tokens_per_tile: int) -> PreferenceEncoder:
    """The encoder of the config's template, tiling, max_seq_length and system message."""
    return PreferenceEncoder(tokenizer, cfg.model.template, image_settings(cfg, num_tokens_per_tile),
                             cfg.data.max_seq_length, cfg.data.system_message, cfg.data.seed)


def build_pairs(cfg: Config, tokenizer: Any, num_tokens_per_tile: int,
                entries: list[DatasetEntry] | None = None) -> PreferenceDataset:
    """Scan every pair of the config's datasets (or `entries`) and check the length drops; raises on bad data."""
    encoder = preference_encoder(cfg, tokenizer, num_tokens_per_tile)
    # The scan is cached under paths.cache_dir like the SFT plan (data.plan_cache): one process scans, the other
    # ranks and later runs load it (data/preference_scan.py).

    opts = scan_options(cfg)
    dataset = PreferenceDataset(pair_entries(cfg) if entries is None else entries, encoder, cfg.data.on_error,
                                opts["cache_dir"], opts["scan_workers"])
    too_lossy = _drop_problem(dataset, float(cfg.data.max_drop_share), cfg.data.max_seq_length)
    if too_lossy:
        raise DataError(too_lossy)
    if dataset.skipped:
        log.warning("preference data: skipped %d pair(s) by reason: %s", sum(dataset.skipped.values()),
                    dict(dataset.skipped))
    return dataset


def preference_train_and_eval(cfg: Config, tokenizer: Any, num_tokens_per_tile: int):
    """(train pairs, report, eval pairs or None, eval report or None) of a preference run."""
    from omegaconf import OmegaConf

    train = build_pairs(cfg, tokenizer, num_tokens_per_tile)
    fraction = float(cfg.data.eval_fraction)
    if fraction > 0:
        held = np.zeros(len(train.rows["dataset"]), dtype=bool)
        for d, entry in enumerate(train.entries):
            rows = np.flatnonzero(train.rows["dataset"] == d)
            held[rows] = line_draws(entry, train.rows["line_no"][rows]) < fraction
        if held.all() or not held.any():
            raise DataError(f"data.eval_fraction={fraction} holds out {int(held.sum())} of the {len(held)} usable "
                            "pairs; choose a share that leaves pairs on both sides")
        ev = train.subset(held, eval_entries(train.entries))
        kept = train.subset(~held)
        kept.skipped, kept.too_long = train.skipped, train.too_long
        log.info("data.eval_fraction=%g: %d of %d pairs held out for eval (by line hash), never trained on",
                 fraction, int(held.sum()), len(held))
        return kept, preference_report(kept), ev, preference_report(ev)
    if has_eval_datasets(cfg.data):
        e = cfg.data.eval
        inline = OmegaConf.to_container(e.datasets, resolve=True) if e.datasets else None
        entries = eval_entries(load_entries(e.meta_path, inline, key="data.eval"))
        ev = build_pairs(cfg, tokenizer, num_tokens_per_tile, entries=entries)
        return train, preference_report(train), ev, preference_report(ev)
    return train, preference_report(train), None, None

