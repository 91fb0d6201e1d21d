"""The preference data of a composed config (data.* and model.* as for SFT): a PreferenceDataset.

Shared by the tools that read pairs (tools/score_pairs.py, tools/data_check.py) so they see the pairs training
sees for the same overrides. Whether a data set is preference data is read from its lines (`is_preference_data`):
a line with question/chosen/rejected is a pair, one with conversations is SFT.
"""

from __future__ import annotations

import json
from typing import Any

from internvl_exp.data.from_config import dataset_entries, image_settings
from internvl_exp.data.sources import DatasetEntry

PAIR_KEYS = ("question", "chosen", "rejected")


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


def preference_encoder(cfg: Any, tokenizer: Any, tokens_per_tile: int):
    from internvl_exp.data.preference import PreferenceEncoder

    return PreferenceEncoder(tokenizer, cfg.model.template, image_settings(cfg, tokens_per_tile), cfg.data.max_seq_length,
                             cfg.data.system_message, seed=cfg.data.seed)


def preference_dataset(cfg: Any, tokenizer: Any, tokens_per_tile: int, entries: list[DatasetEntry] | None = None,
                       on_error: str | None = None):
    """Scan the config's data sets (or `entries`) as preference pairs (PreferenceDataError on bad data under
    strict). `on_error` overrides data.on_error (data_check scans with skip to report every problem)."""
    from internvl_exp.data.preference import PreferenceDataset

    return PreferenceDataset(dataset_entries(cfg) if entries is None else entries,
                             preference_encoder(cfg, tokenizer, tokens_per_tile), on_error or cfg.data.on_error)
