"""The objective group (sft | dpo | mpo): composition, one line per bad key, and the pair data a preference run
builds from the data config (pair ids, held-out split, length drops)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import compose, launch_importing


def _problems(overrides: list[str], tmp_path: Path) -> list[str]:
    from internvl_exp.config.validate import config_problems

    return config_problems(compose(overrides, tmp_path))


def test_mpo_and_dpo_carry_internvl_settings(tmp_path) -> None:
    mpo = compose(["objective=mpo", "data=demo_pref"], tmp_path).objective
    assert (mpo.kind, mpo.beta, mpo.weights.sigmoid, mpo.weights.bco_pair, mpo.rpo_alpha) == ("mpo", 0.1, 0.8, 0.2, 1.0)
    assert mpo.label_smoothing == 0.0 and mpo.reference is None
    dpo = compose(["objective=dpo", "data=demo_pref"], tmp_path).objective
    assert (dpo.weights.sigmoid, dpo.weights.bco_pair, dpo.rpo_alpha) == (1.0, 0.0, None)
    assert _problems(["objective=mpo", "data=demo_pref"], tmp_path) == []
    from internvl_exp.train.recipe.preference_step import objective_of

    objective = objective_of(compose(["objective=mpo", "data=demo_pref"], tmp_path))
    assert dict(objective.weights) == {"sigmoid": 0.8, "bco_pair": 0.2} and objective.rpo_alpha == 1.0


@pytest.mark.parametrize("override,line", [
    ("objective.beta=0", "objective.beta: 0.0 must be > 0"),
    ("objective.weights.bco_pair=-1", "objective.weights.bco_pair: -1.0 must be >= 0"),
    ("objective.label_smoothing=0.5", "objective.label_smoothing: 0.5 must be in [0, 0.5)"),
    ("objective.rpo_alpha=-1", "objective.rpo_alpha: -1.0 must be >= 0"),
    ("objective.nll_normalisation=pair", "objective.nll_normalisation: 'pair' is not one of"),
    ("objective.kind=ppo", "objective.kind: 'ppo' is not one of"),
    ("data.packing.enabled=true", "data.packing.enabled: objective=mpo trains on pairs"),
    ("data.loss_reduction=square", "data.loss_reduction: 'square' weighs SFT tokens"),
    ("data.length_policy=truncate", "data.length_policy: 'truncate'; objective=mpo keeps or drops a pair whole"),
    ("objective.reference=precomputed", "objective.reference=precomputed: the stored log-probs are keyed by the "
                                        "starting checkpoint's files, and model.random_init=true has none"),
    ("objective.reference=/no/such/ckpt", "objective.reference: /no/such/ckpt is not a directory"),
])
def test_each_bad_key_is_one_line(override, line, tmp_path) -> None:
    problems = _problems(["objective=mpo", "data=demo_pref", override], tmp_path)
    assert len(problems) == 1 and problems[0].startswith(line), problems


def test_no_preference_term_and_sft_keys(tmp_path) -> None:
    problems = _problems(["objective=dpo", "data=demo_pref", "objective.weights.sigmoid=0"], tmp_path)
    assert problems == ["objective.weights: both sigmoid and bco_pair are 0, so no preference term would train; "
                        "set at least one > 0 (or use objective=sft)"]
    problems = _problems(["objective.beta=0.2", "objective.reference=/ckpt"], tmp_path)  # objective=sft
    assert [p.split(":")[0] for p in problems] == ["objective.beta", "objective.reference"]
    assert all("objective=sft does not use it" in p for p in problems)


def test_cfg_job_shows_the_group_without_torch() -> None:
    res = launch_importing(["objective=mpo", "data=demo_pref", "--cfg", "job"])
    assert "EXIT=0" in res.stderr and "HEAVY=\n" in res.stderr + "\n", res.stderr[-2000:]
    assert "objective:\n  name: mpo\n  kind: mpo\n  beta: 0.1\n  weights:\n    sigmoid: 0.8\n    bco_pair: 0.2" in res.stdout
    bad = launch_importing(["objective=mpo", "data=demo_pref", "objective.beta=-1"])
    assert "objective.beta: -1.0 must be > 0" in bad.stderr and "HEAVY=\n" in bad.stderr + "\n"


# --- the pair data of a preference run --------------------------------------------------------------------------


def _pairs_meta(tmp_path: Path, lines: list[dict]) -> Path:
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    meta = {"pairs": {"root": str(tmp_path), "annotation": str(tmp_path / "pairs.jsonl"), "repeat_time": 1}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return tmp_path / "meta.json"


def _text_pairs(n: int) -> list[dict]:
    return [{"question": f"What number comes after {k % 10}?", "chosen": f"{k % 10 + 1}.", "rejected": "None."}
            for k in range(n)]


def test_eval_fraction_holds_out_whole_pairs_that_never_train(tmp_path, tokenizer) -> None:
    from internvl_exp.data.preference import collate_pairs
    from internvl_exp.data.preference_data import preference_train_and_eval

    meta = _pairs_meta(tmp_path, _text_pairs(40))
    cfg = compose(["objective=dpo", "data=meta", f"data.meta_path={meta}", "data.eval_fraction=0.25"], tmp_path)
    train, report, ev, ev_report = preference_train_and_eval(cfg, tokenizer, cfg.resolved.tokens_per_tile)
    train_lines = set(train.rows["line_no"].tolist())
    eval_lines = set(ev.rows["line_no"].tolist())
    assert train_lines and eval_lines and not train_lines & eval_lines
    assert train_lines | eval_lines == set(range(1, 41))
    assert report.samples == len(train) and ev_report.samples == len(ev) == len(eval_lines)
    batch = collate_pairs([ev[0], ev[1]], tokenizer.pad_token_id)
    lines = sorted(eval_lines)
    assert batch["pair_ids"].tolist() == [[0, lines[0]], [0, lines[1]]]  # (dataset, 1-based line) of each pair
    assert batch["input_ids"].shape[0] == 4 and batch["num_pairs"] == 2


def test_long_pairs_are_dropped_whole_and_too_many_stop_the_run(tmp_path, tokenizer) -> None:
    from internvl_exp.data.dataset import DataError
    from internvl_exp.data.preference_data import build_pairs

    long = {"question": "What number comes after 3?", "chosen": "4. " * 200, "rejected": "5."}
    meta = _pairs_meta(tmp_path, _text_pairs(19) + [long])
    base = ["objective=dpo", "data=meta", f"data.meta_path={meta}", "data.max_seq_length=128"]
    cfg = compose(base + ["data.max_drop_share=0.1"], tmp_path)
    pairs = build_pairs(cfg, tokenizer, cfg.resolved.tokens_per_tile)
    assert len(pairs) == 19 and 20 not in pairs.rows["line_no"] and dict(pairs.too_long) == {"pairs": 1}
    cfg = compose(base + ["data.max_drop_share=0.01"], tmp_path)
    with pytest.raises(DataError, match=r"pairs: 1 of 20 pairs \(5%\) have a side longer than data.max_seq_length=128"):
        build_pairs(cfg, tokenizer, cfg.resolved.tokens_per_tile)
    assert np.all(pairs.rows["rejected_length"] <= 128)


def test_the_objective_cannot_change_on_resume() -> None:
    from dataclasses import asdict

    from internvl_exp.config.schema import ObjectiveConfig
    from internvl_exp.train.checkpointing.resume_config import compare

    sft = asdict(ObjectiveConfig())
    mpo = {**sft, "name": "mpo", "kind": "mpo", "weights": {"sigmoid": 0.8, "bco_pair": 0.2}, "rpo_alpha": 1.0}
    refused, _ = compare({"objective": mpo}, {"objective": sft})
    assert "objective.kind (sft -> mpo)" in refused and "objective.rpo_alpha (null -> 1.0)" in refused
    # A run saved before the group existed trained sft: resuming it as sft is fine, as mpo is refused.
    assert compare({"objective": sft}, {}) == ([], [])
    assert "objective.kind (sft -> mpo)" in compare({"objective": mpo}, {})[0]


def test_drop_path_draws_one_mask_for_both_answers(tmp_path, tokenizer) -> None:
    """The training forward encodes a pair's images once: with stochastic depth on, a pair whose two answers are
    equal gets equal log-probs, where encoding the tiles twice (InternVL's way) draws two masks and differs."""
    import torch

    from internvl_exp.data.demo_pref import generate_pair_demo
    from internvl_exp.data.from_config import image_settings
    from internvl_exp.data.preference import PreferenceEncoder, collate_pairs
    from internvl_exp.data.sources import load_entries
    from internvl_exp.models.loading import load_model
    from internvl_exp.models.registry import get_family
    from internvl_exp.objectives.sequence_logps import pair_logps
    from internvl_exp.train.recipe.pair_forward import batch_logps
    from internvl_exp.train.tuning.trainable import make_trainable

    cfg = compose(["objective=mpo", "data=demo_pref", "freeze=full", "model.drop_path_rate=0.5"], tmp_path)
    demo = generate_pair_demo(tmp_path / "pairs")
    entry = load_entries(str(demo / "meta.json"), None)[0]  # colour: one image per pair
    line = json.loads(entry.annotation.read_text().splitlines()[0])
    line["rejected"] = line["chosen"]
    encoder = PreferenceEncoder(tokenizer, cfg.model.template, image_settings(cfg, cfg.resolved.tokens_per_tile),
                                cfg.data.max_seq_length)
    batch = collate_pairs([encoder.load(entry, encoder.plan(entry, json.dumps(line)))], tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = make_trainable(load_model(cfg.model, tokenizer), get_family(cfg.model.family), cfg.freeze, cfg.model).model
    model.train()
    with torch.no_grad():
        for _ in range(5):
            once = batch_logps(model, model, batch, chunked=False)
            assert torch.equal(once["chosen_logps"], once["rejected_logps"])
        # The oracle that the masks are live: tiles encoded twice differ (in at least one of 5 draws).
        twice = [pair_logps(model, batch, encode_images_once=False) for _ in range(5)]
    assert any(not torch.equal(t["chosen_logps"], t["rejected_logps"]) for t in twice)
