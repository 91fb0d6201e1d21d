"""Eval data: `data.eval` datasets, or a held-out share of the training lines (`data.eval_fraction`).

Both go through the same pre-flight scan as training (plan cache, data.on_error, data.length_policy,
max_seq_length). An eval set holds every usable line once, in file order: `repeat_time` and `weight` shape a
training epoch and do not apply to it, and no augmentation is drawn (scores are comparable between runs).

The held-out split is a function of each line alone: line k of a dataset is held out when a hash of
(dataset name, annotation file name, k) falls below `eval_fraction`. It is the same in every run, on every
rank and node (no RNG, no path prefix that differs between machines), whatever the other lines, so adding
lines to a file never moves an old line across the split. Held-out lines are removed from the plan before
the training dataset is built, so repeat_time and mixture weights sample from the remaining lines only and a
held-out line never reaches training.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from typing import Any

import numpy as np

from internvl_exp.config.eval_settings import has_eval_datasets
from internvl_exp.config.schema import Config
from internvl_exp.data.dataset import DataError, DataReport, SupervisedDataset, count_dataset
from internvl_exp.data.from_config import build_from_config
from internvl_exp.data.plan import Plan
from internvl_exp.data.sources import DatasetEntry, load_entries

log = logging.getLogger(__name__)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each value (SplitMix64's finaliser; numpy uint64 wraps like C)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def line_draws(entry: DatasetEntry, line_no: np.ndarray) -> np.ndarray:
    """Uniform numbers in [0, 1), one per line number of `entry`'s file: a line's draw depends on the dataset
    name, the annotation's file name and the line number only."""
    identity = np.uint64(zlib.crc32(f"{entry.name}\0{entry.annotation.name}".encode()))
    keys = (identity << np.uint64(32)) | np.asarray(line_no, dtype=np.uint64)
    return (_splitmix64(keys) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def held_out_rows(plan: Plan, entries: list[DatasetEntry], fraction: float) -> np.ndarray:
    """A boolean per plan row: True where the line is held out for eval."""
    dataset = np.asarray(plan.rows["dataset"])
    line_no = np.asarray(plan.rows["line_no"])
    held = np.zeros(len(dataset), dtype=bool)
    for d, entry in enumerate(entries):
        rows = np.flatnonzero(dataset == d)
        held[rows] = line_draws(entry, line_no[rows]) < fraction
    return held


def subset_plan(plan: Plan, keep: np.ndarray) -> Plan:
    """The plan's rows where `keep` (its flat tile array is shared: tiles_at still indexes it)."""
    rows = {name: np.asarray(a)[keep] for name, a in plan.rows.items()}
    return Plan(rows, plan.tiles, list(plan.problems), int(np.asarray(plan.rows["truncated"])[keep].sum()))


def eval_entries(entries: list[DatasetEntry]) -> list[DatasetEntry]:
    """The entries as an eval set reads them: every line once, no mixture weight, no augmentation."""
    return [dataclasses.replace(e, repeat_time=1.0, weight=None, data_augment=False) for e in entries]


def eval_dataset(plan: Plan, entries: list[DatasetEntry], planner: Any, on_error: str) -> tuple[SupervisedDataset, DataReport]:
    dataset = SupervisedDataset(plan, eval_entries(entries), planner, on_error)
    report = DataReport(plan_source="split")
    count_dataset(report, dataset)
    return dataset, report


def split_held_out(dataset: SupervisedDataset, report: DataReport, fraction: float):
    """(train dataset, its report, eval dataset, its report) from a scanned training dataset."""
    held = held_out_rows(dataset.plan, dataset.entries, fraction)
    if held.all():
        raise DataError(f"data.eval_fraction={fraction} holds out every one of the {len(held)} usable lines; lower it")
    train = SupervisedDataset(subset_plan(dataset.plan, ~held), dataset.entries, dataset.planner, dataset.on_error)
    train_report = dataclasses.replace(report)
    count_dataset(train_report, train)
    ev, ev_report = eval_dataset(subset_plan(dataset.plan, held), dataset.entries, dataset.planner, dataset.on_error)
    ev_report.plan_source = report.plan_source
    log.info("data.eval_fraction=%g: %d of %d usable lines held out for eval (by line hash), never trained on",
             fraction, int(held.sum()), len(held))
    return train, train_report, ev, ev_report


def build_eval_datasets(cfg: Config, tokenizer: Any, num_tokens_per_tile: int) -> tuple[SupervisedDataset, DataReport]:
    """`data.eval`'s datasets, scanned and planned as training data is (same policies, same cache)."""
    from omegaconf import OmegaConf

    ev = cfg.data.eval
    inline = OmegaConf.to_container(ev.datasets, resolve=True) if ev.datasets else None
    entries = load_entries(ev.meta_path, inline, key="data.eval")
    ignored = [e.name for e in entries if e.repeat_time != 1.0 or e.weight is not None or e.data_augment]
    if ignored:
        log.warning("data.eval: repeat_time, weight and data_augment do not apply to eval sets (every line is "
                    "evaluated once, unaugmented); ignored for %s", ignored)
    return build_from_config(cfg, tokenizer, num_tokens_per_tile, entries=eval_entries(entries))


def train_and_eval_data(cfg: Config, tokenizer: Any, num_tokens_per_tile: int):
    """(train dataset, train report, eval dataset or None, eval report or None) of a composed config."""
    train, report = build_from_config(cfg, tokenizer, num_tokens_per_tile)
    fraction = float(cfg.data.eval_fraction)
    if fraction > 0:
        return split_held_out(train, report, fraction)
    if has_eval_datasets(cfg.data):
        ev, ev_report = build_eval_datasets(cfg, tokenizer, num_tokens_per_tile)
        return train, report, ev, ev_report
    return train, report, None, None
