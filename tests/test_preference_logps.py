"""Per-sequence log-probs from our converted checkpoints vs InternVL's MultimodalDPOTrainer (golden mpo/results.pt)."""

from __future__ import annotations

import json

import pytest
import torch

from golden_mpo import GOLDEN, converted
from internvl_exp.data.planner import ImageSettings
from internvl_exp.data.preference import PreferenceEncoder, collate_pairs
from internvl_exp.data.sources import load_entries
from internvl_exp.objectives.preference_loss import PreferenceObjective, RunningMean, preference_loss
from internvl_exp.objectives.sequence_logps import pair_logps, sequence_logps_from_logits


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tmp = tmp_path_factory.mktemp("mpo")
    dirs = {which: converted(which, tmp) for which in ("policy", "reference")}
    tokenizer = AutoTokenizer.from_pretrained(str(dirs["reference"]))
    models = {which: AutoModelForImageTextToText.from_pretrained(str(d), dtype=torch.float32).eval()
              for which, d in dirs.items()}
    meta = json.loads((GOLDEN / "data" / "meta.json").read_text())
    entry = load_entries(None, {n: {**s, "root": str(GOLDEN / s["root"]), "annotation": str(GOLDEN / s["annotation"])}
                                for n, s in meta.items()})[0]
    encoder = PreferenceEncoder(tokenizer, "internvl2_5", ImageSettings(tile_size=56, tokens_per_tile=4), 512)
    lines = entry.annotation.read_text().splitlines()
    items = [encoder.load(entry, encoder.plan(entry, text)) for text in lines]  # jsonl order = golden row order
    return models, tokenizer, items


def test_logps_match_internvl_for_policy_and_reference(setup) -> None:
    models, tokenizer, items = setup
    golden = torch.load(GOLDEN / "mpo" / "results.pt", weights_only=False)["step1"]
    batch = collate_pairs(items, tokenizer.pad_token_id)  # all 7 pairs, one forward of 14 rows
    ours = {}
    with torch.no_grad():
        for which, model in models.items():
            out = pair_logps(model, batch)
            ours[which] = out
            for side in ("chosen", "rejected"):
                theirs = golden[f"{which}_{side}_logps"]
                diff = (out[f"{side}_logps"] - theirs).abs().max().item()
                assert diff < 1e-4, (which, side, diff)
    # The counts are those of the golden labels, and the whole MPO loss follows from these log-probs.
    counts = torch.tensor([int((it["chosen_labels"] != -100).sum()) for it in items])
    assert torch.equal(ours["policy"]["chosen_counts"], counts)
    loss = preference_loss(PreferenceObjective(), ours["policy"]["chosen_logps"], ours["policy"]["rejected_logps"],
                           ours["reference"]["chosen_logps"], ours["reference"]["rejected_logps"],
                           ours["policy"]["chosen_counts"], RunningMean())
    assert loss.terms["nll"].item() == pytest.approx(golden["nll_loss"], rel=1e-5)
    assert loss.loss.item() == pytest.approx(golden["loss"], rel=1e-5)
    assert loss.delta == pytest.approx(golden["terms"][1]["delta_used"], rel=1e-3)  # a mean of ~0.005 from ±1e-4


def test_encoding_images_once_equals_the_models_own_forward(setup) -> None:
    models, tokenizer, items = setup
    batch = collate_pairs([items[1], items[6], items[5]], tokenizer.pad_token_id)  # image, text-only, two images
    model = models["policy"]
    with torch.no_grad():
        once = pair_logps(model, batch)
        twice = pair_logps(model, batch, encode_images_once=False)
    for key in once:
        assert torch.allclose(once[key].double(), twice[key].double(), rtol=0, atol=1e-4), key


def test_padding_and_batching_do_not_change_logps(setup) -> None:
    models, tokenizer, items = setup
    model = models["policy"]
    with torch.no_grad():
        alone = pair_logps(model, collate_pairs([items[0]], tokenizer.pad_token_id))
        batched = pair_logps(model, collate_pairs([items[0], items[2]], tokenizer.pad_token_id))
    assert abs(alone["chosen_logps"].item() - batched["chosen_logps"][0].item()) < 1e-4
    assert abs(alone["rejected_logps"].item() - batched["rejected_logps"][0].item()) < 1e-4


def test_sequence_logps_from_logits_against_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g)
    labels = torch.tensor([[-100, 1, 2, -100, 4, 5], [-100] * 6, [-100, -100, 7, 8, 9, -100]])
    sums, counts = sequence_logps_from_logits(logits, labels)
    logp = logits.double().log_softmax(-1)
    for r in range(3):
        expected = sum(logp[r, t - 1, labels[r, t]].item() for t in range(1, 6) if labels[r, t] != -100)
        assert sums[r].item() == pytest.approx(expected, abs=1e-5)
        assert counts[r].item() == int((labels[r, 1:] != -100).sum())
