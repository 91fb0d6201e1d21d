"""The `objective` group's rules (sft | dpo | mpo; docs/preference.md): one line per bad key. Light: no torch."""

from __future__ import annotations

import os

from internvl_exp.config.schema import Config

OBJECTIVES = ("sft", "dpo", "mpo")
PREFERENCE = ("dpo", "mpo")
NLL_NORMALISATIONS = ("token", "sequence")
# The value the preference runs' special reference takes: log-probs precomputed on disk (tools.score_pairs).
PRECOMPUTED = "precomputed"
PAIR_DEMO = "demo_pref"
SFT_DEMOS = ("demo", "demo_eval", "demo_large", "mix")  # conversations (data=mix: the demo datasets inline)


def is_preference(cfg: Config) -> bool:
    """True when the run trains on pairs (objective dpo or mpo)."""
    return str(cfg.objective.kind) in PREFERENCE


def objective_problems(cfg: Config) -> list[str]:
    o = cfg.objective
    kind = str(o.kind)
    if kind not in OBJECTIVES:
        return [f"objective.kind: {kind!r} is not one of {list(OBJECTIVES)} (pick the group: objective=sft|dpo|mpo)"]
    problems: list[str] = []
    data_name = str(cfg.data.name)
    if kind == "sft" and data_name == PAIR_DEMO:
        return [f"data={PAIR_DEMO}: holds preference pairs, which objective=sft cannot train on; choose objective=dpo "
                "or objective=mpo (or an SFT data set such as data=demo)"]
    if kind != "sft" and data_name in SFT_DEMOS:
        return [f"data={data_name}: the SFT demo (conversations), but objective={kind} trains on preference pairs; "
                f"use data={PAIR_DEMO} or your own pairs with data.meta_path (docs/preference.md)"]
    if kind == "sft":
        # Under sft none of the preference keys does anything: refuse them rather than ignore them.
        set_keys = [k for k, v, default in (("beta", o.beta, 0.1), ("weights.sigmoid", o.weights.sigmoid, 0.0),
                                            ("weights.bco_pair", o.weights.bco_pair, 0.0),
                                            ("rpo_alpha", o.rpo_alpha, None),
                                            ("label_smoothing", o.label_smoothing, 0.0),
                                            ("nll_normalisation", o.nll_normalisation, "token"),
                                            ("reference", o.reference, None)) if v != default]
        for key in set_keys:
            problems.append(f"objective.{key}: set, but objective=sft does not use it; choose objective=dpo or "
                            f"objective=mpo, or remove the override")
        return problems
    if not o.beta > 0:
        problems.append(f"objective.beta: {o.beta} must be > 0")
    for key in ("sigmoid", "bco_pair"):
        if getattr(o.weights, key) < 0:
            problems.append(f"objective.weights.{key}: {getattr(o.weights, key)} must be >= 0 (0 leaves the term out)")
    if o.weights.sigmoid <= 0 and o.weights.bco_pair <= 0:
        problems.append("objective.weights: both sigmoid and bco_pair are 0, so no preference term would train; "
                        "set at least one > 0 (or use objective=sft)")
    if o.rpo_alpha is not None and o.rpo_alpha < 0:
        problems.append(f"objective.rpo_alpha: {o.rpo_alpha} must be >= 0 (or null for no NLL term)")
    if not 0.0 <= o.label_smoothing < 0.5:
        problems.append(f"objective.label_smoothing: {o.label_smoothing} must be in [0, 0.5)")
    if o.nll_normalisation not in NLL_NORMALISATIONS:
        problems.append(f"objective.nll_normalisation: {o.nll_normalisation!r} is not one of {list(NLL_NORMALISATIONS)}")
    if o.reference == PRECOMPUTED:  # the starting weights' log-probs, computed before training (reference.py)
        if cfg.model.random_init:
            problems.append("objective.reference=precomputed: the stored log-probs are keyed by the starting "
                            "checkpoint's files, and model.random_init=true has none; start from a checkpoint "
                            "(model.path=DIR) or use objective.reference=null")
    elif o.reference is not None and not os.path.isdir(os.path.expanduser(str(o.reference))):
        problems.append(f"objective.reference: {o.reference} is not a directory; give a checkpoint directory (either "
                        "layout) or a run directory (its final/ is used), or null for the starting weights")
    d = cfg.data
    if d.packing.enabled:
        problems.append(f"data.packing.enabled: objective={kind} trains on pairs, which are not packed; set "
                        "data.packing.enabled=false")
    if d.loss_reduction != "token":
        problems.append(f"data.loss_reduction: {d.loss_reduction!r} weighs SFT tokens and does not apply to "
                        f"objective={kind} (its NLL term is objective.nll_normalisation); leave it token")
    if d.length_policy != "drop":
        problems.append(f"data.length_policy: {d.length_policy!r}; objective={kind} keeps or drops a pair whole (a "
                        "truncated answer would change what is compared); set data.length_policy=drop")
    if cfg.trainer.eval_generate_samples:
        problems.append(f"trainer.eval_generate_samples: generation scores need SFT eval data; objective={kind} "
                        "evaluates held-out pairs (eval_rewards/accuracies); set it to 0")
    return problems
