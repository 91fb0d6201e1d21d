"""The demo trains with packing on (off: test_train_e2e.py) to its loss target, with an exact step count."""

from __future__ import annotations

import pytest

from conftest import compose


@pytest.mark.slow
def test_demo_trains_packed(tmp_path, demo_dir):
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.run import run

    cfg = compose(["run_name=packed", "data.packing.enabled=true", "data.packing.max_packed_tokens=512",
                   "trainer.per_device_train_batch_size=1", "trainer.save_final=false"], tmp_path, demo_dir)
    metrics = run(cfg, RunDir(tmp_path / "run"))
    assert metrics["status"] == "completed"
    assert metrics["final_loss"] < metrics["initial_loss"] / 2, metrics
    # 3 epochs of the 192 demo samples, every one trained once per epoch, no padding anywhere.
    t = metrics["throughput"]
    assert t["samples"] == 3 * 192 and metrics["samples"] == 3 * 192
    assert t["padding_fraction"] == 0.0 and t["padded_tokens"] == t["tokens"]
    # The stream was planned up front: the Trainer ran exactly its packs, one per step.
    assert metrics["steps"] < 3 * 192 / 4  # fuller steps than the padded demo's 144


def test_group_by_length_batches_similar_lengths(tmp_path, demo_dir):
    import numpy as np

    from internvl_exp.data.from_config import build_from_config
    from internvl_exp.data.sampling import PlanLengthGroupedSampler
    from internvl_exp.models.loading import load_tokenizer

    cfg = compose(["data=mix"], tmp_path, demo_dir)
    dataset, _ = build_from_config(cfg, load_tokenizer(cfg.model, None), 16)
    order = list(iter(PlanLengthGroupedSampler(4, dataset)))
    assert sorted(order) == list(range(len(dataset)))
    lengths = dataset.lengths
    spread = lambda idx: np.mean([np.ptp(lengths[idx[i:i + 4]]) for i in range(0, len(idx) - 3, 4)])
    shuffled = list(np.random.default_rng(0).permutation(len(dataset)))
    assert spread(order) < spread(shuffled) / 2


def test_pack_stream_is_a_function_of_seed_and_epoch(tmp_path, demo_dir):
    """Resume skips batches of the same stream: a rebuilt stream is identical, epochs differ, and each epoch
    holds every sample of its epoch order once."""
    import numpy as np

    from internvl_exp.data.from_config import build_from_config
    from internvl_exp.data.packing import PackedDataset, PackingSettings
    from internvl_exp.models.loading import load_tokenizer

    cfg = compose(["data=mix"], tmp_path, demo_dir)
    tok = load_tokenizer(cfg.model, None)
    settings = PackingSettings(512, 48, 1000)
    a = PackedDataset(build_from_config(cfg, tok, 16)[0], settings, 2.0, 4, seed=0)
    b = PackedDataset(build_from_config(cfg, tok, 16)[0], settings, 2.0, 4, seed=0)
    assert len(a) == len(b) and len(a) % 4 == 0
    assert all(ea == eb and np.array_equal(pa, pb) for (ea, pa), (eb, pb) in zip(a.packs, b.packs))
    for epoch in (0, 1):
        positions = np.concatenate([p for e, p in a.packs if e == epoch])
        assert sorted(positions.tolist()) == list(range(192))
    first = [p.tolist() for e, p in a.packs if e == 0]
    second = [p.tolist() for e, p in a.packs if e == 1]
    assert first != second
    c = PackedDataset(build_from_config(cfg, tok, 16)[0], settings, 1.0, 4, seed=1)
    assert [p.tolist() for _, p in c.packs] != first
