"""Packing: the loss and gradients of packed batches equal the padded ones and an independent per-sample
oracle (each sample run alone); no attention across samples of a pack; the pack rule keeps samples whole."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from internvl_exp.data.packing import PackedCollator, even_out, pack_rows
from internvl_exp.data.templates import IGNORE_INDEX
from training_helpers import build, quick_cfg

# float32 on CPU: packed and padded runs differ only by summation order (and sdpa's masked kernels).
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_dir):
    from internvl_exp.data.from_config import build_from_config
    from internvl_exp.models.loading import load_tokenizer

    tmp = tmp_path_factory.mktemp("pack")
    cfg = quick_cfg(["data=mix", "freeze=full"], tmp, demo_dir)
    tokenizer = load_tokenizer(cfg.model, None)
    dataset, _ = build_from_config(cfg, tokenizer, 16)
    family, trainable = build(cfg, tokenizer)
    # A mix of image, multi-image and text-only samples of different lengths.
    items = [dataset[i] for i in range(6)]
    assert any("pixel_tiles" in it for it in items) and len({len(it["input_ids"]) for it in items}) > 1
    return cfg, tokenizer, family, trainable.model, items, tmp


def _trainer(cfg, model, family, tmp, collator, world=1):
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.args import training_arguments
    from internvl_exp.train.recipe.trainer import InternVLTrainer

    args = training_arguments(cfg, RunDir(tmp / "run"))
    return InternVLTrainer(model=model, args=args, data_collator=collator, family=family, optimizer_config=cfg.optimizer)


def _oracle(model, items, reduction):
    """Each sample alone (no padding, no packing), its per-token CE by hand, combined by the reduction's
    definition: token = all supervised tokens' mean; sample = mean of per-sample means; square = InternVL's
    sum_s (sum CE_s)/sqrt(n_s) / sum_s sqrt(n_s)."""
    from internvl_exp.data.collator import pixel_values

    sums, counts = [], []
    for it in items:
        kw = {"input_ids": it["input_ids"][None]}
        px = pixel_values([it])
        if px is not None:
            kw["pixel_values"] = px
        logits = model(**kw, use_cache=False).logits[0, :-1]
        target = it["labels"][1:]
        keep = target != IGNORE_INDEX
        ce = F.cross_entropy(logits[keep], target[keep], reduction="sum")
        sums.append(ce)
        counts.append(int(keep.sum()))
    if reduction == "token":
        return sum(sums) / sum(counts)
    if reduction == "sample":
        return sum(s / n for s, n in zip(sums, counts)) / len(items)
    return sum(s / math.sqrt(n) for s, n in zip(sums, counts)) / sum(math.sqrt(n) for n in counts)


def _step_loss_and_grads(trainer, model, batches):
    """What one optimizer step computes: the step's denominator over every micro-batch, then each micro-batch's
    loss (summed, as the Trainer does with loss_is_scaled_for_ga) and the gradients."""
    model.zero_grad()
    num = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    total = 0.0
    for b in batches:
        loss = trainer.compute_loss(model, dict(b), num_items_in_batch=num)
        loss.backward()
        total += loss.detach()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return total, grads


@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
def test_packed_equals_padded_and_oracle(setup, reduction):
    from internvl_exp.data.collator import Collator

    cfg, tokenizer, family, model, items, tmp = setup
    model.eval()  # no dropout: the same function in every mode
    padded = Collator(tokenizer.pad_token_id, reduction)
    packed = PackedCollator(reduction)
    trainer = _trainer(cfg, model, family, tmp, padded)
    # Two micro-batches of one step (gradient accumulation), split differently in the two modes.
    pad_loss, pad_grads = _step_loss_and_grads(trainer, model, [padded(items[:2]), padded(items[2:])])
    pack_loss, pack_grads = _step_loss_and_grads(trainer, model, [packed([items[:4]]), packed([items[4:5], items[5:]])])
    oracle = _oracle(model, items, reduction)
    assert torch.allclose(pad_loss, oracle, **TOL), (pad_loss, oracle)
    assert torch.allclose(pack_loss, oracle, **TOL), (pack_loss, oracle)
    assert pad_grads.keys() == pack_grads.keys() and pad_grads
    for name in pad_grads:
        assert torch.allclose(pad_grads[name], pack_grads[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_attention_across_samples_in_a_pack(setup, attn):
    cfg, tokenizer, family, model, items, tmp = setup
    model.eval()
    model.set_attn_implementation(attn)
    try:
        collate = PackedCollator("token")
        a, b, c = items[0], items[1], items[2]
        changed = dict(b)
        ids = b["input_ids"].clone()
        text = (ids != model.config.image_token_id).nonzero().flatten()
        ids[text[1:6]] = (ids[text[1:6]] + 7) % 100 + 3  # perturb sample b's text tokens
        changed["input_ids"] = ids
        with torch.no_grad():
            base = model(**{k: v for k, v in collate([[a, b, c]]).items() if k not in ("loss_weight", "sample_lengths")}).logits[0]
            pert = model(**{k: v for k, v in collate([[a, changed, c]]).items() if k not in ("loss_weight", "sample_lengths")}).logits[0]
            alone = model(**{k: v for k, v in collate([[c]]).items() if k not in ("loss_weight", "sample_lengths")}).logits[0]
        la, lb = len(a["input_ids"]), len(b["input_ids"])
        assert not torch.allclose(base[la:la + lb], pert[la:la + lb])  # the perturbation does reach b
        assert torch.allclose(base[:la], pert[:la], **TOL)
        assert torch.allclose(base[la + lb:], pert[la + lb:], **TOL)  # c, after b, sees nothing of b
        assert torch.allclose(base[la + lb:], alone, rtol=1e-4, atol=1e-5)  # c in the pack = c alone
    finally:
        model.set_attn_implementation("sdpa")


def test_packed_batch_layout(setup):
    *_, items, _ = setup
    batch = PackedCollator("token")([items[:3], items[3:5]])
    lens = [len(it["input_ids"]) for it in items[:5]]
    assert batch["input_ids"].shape == (1, sum(lens)) and "attention_mask" not in batch
    starts = np.cumsum([0] + lens[:-1])
    assert (batch["position_ids"][0, starts] == 0).all()
    assert (batch["labels"][0, starts] == IGNORE_INDEX).all()
    assert torch.equal(batch["input_ids"][0], torch.cat([it["input_ids"] for it in items[:5]]))
    n_tiles = sum(len(it["pixel_tiles"]) for it in items[:5] if "pixel_tiles" in it)
    assert batch["pixel_values"].shape[0] == n_tiles
    flash = PackedCollator("token", flash=True)([items[:2]])
    assert flash["cu_seq_lens_q"].tolist() == [0, lens[0], lens[0] + lens[1]]


def test_pack_rule_keeps_samples_whole_and_bounded():
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.pareto(1.2, 5000) * 60 + 20, 4000).astype(int)
    tiles = rng.integers(0, 3, 5000)
    tiles[7] = 200  # more tiles than a pack allows: alone, never dropped
    packs = pack_rows(lengths, tiles, 4096, 96, 500)
    flat = np.concatenate(packs)
    assert sorted(flat.tolist()) == list(range(5000))  # every sample exactly once
    for p in packs:
        assert lengths[p].sum() <= 4096
        assert tiles[p].sum() <= 96 or len(p) == 1
        assert (np.diff(p) > 0).all()  # stream order kept inside a pack
    assert lengths.sum() / (len(packs) * 4096) > 0.95
    even = even_out([(0, p) for p in packs], 8)
    assert len(even) % 8 == 0
    assert sorted(np.concatenate([p for _, p in even]).tolist()) == list(range(5000))
    with pytest.raises(ValueError, match="max_packed_tokens"):
        pack_rows(np.array([10, 5000]), np.array([0, 0]), 4096, 24, 10)
