"""The precomputed reference log-probs (objectives/reference_logps.py): the golden reference's values from one pass,
looked up by pair_ids, reused when nothing changed, computed again when the weights or the data change."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from golden_mpo import GOLDEN, converted
from internvl_exp.data.planner import ImageSettings
from internvl_exp.data.preference import PreferenceDataset, PreferenceEncoder
from internvl_exp.data.sources import load_entries
from internvl_exp.objectives import reference_logps as rl


def dataset_at(data_dir, tokenizer, max_seq_length: int = 512) -> PreferenceDataset:
    meta = json.loads((GOLDEN / "data" / "meta.json").read_text())
    inline = {n: {**s, "root": str(data_dir / "images"), "annotation": str(data_dir / "mpo_demo.jsonl")}
              for n, s in meta.items()}
    encoder = PreferenceEncoder(tokenizer, "internvl2_5", ImageSettings(tile_size=56, tokens_per_tile=4, max_dynamic_patch=6),
                                max_seq_length)
    return PreferenceDataset(load_entries(None, inline), encoder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tmp = tmp_path_factory.mktemp("reference_logps")
    ref_dir = converted("reference", tmp)
    weights = tmp / "reference_weights"  # a copy whose files the tests may touch
    shutil.copytree(ref_dir, weights)
    data = tmp / "data"
    shutil.copytree(GOLDEN / "data", data)
    tokenizer = AutoTokenizer.from_pretrained(str(weights))
    model = AutoModelForImageTextToText.from_pretrained(str(weights), dtype=torch.float32).eval()
    return tmp, weights, data, tokenizer, model


class Unusable(torch.nn.Module):
    """A stand-in reference that fails if it is ever run: a cache hit must not run the model."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise AssertionError("the reference ran although its log-probs were stored")


def test_precompute_matches_internvl_and_is_reused(setup) -> None:
    tmp, weights, data, tokenizer, model = setup
    cache = tmp / "cache_a"
    dataset = dataset_at(data, tokenizer)
    store = rl.precompute(model, dataset, weights, cache, batch_size=3)
    assert len(store) == 7 and store.path.parent == cache / rl.STORE_DIR
    assert not list((cache / rl.STORE_DIR).glob("*.partial-*"))
    golden = torch.load(GOLDEN / "mpo" / "results.pt", weights_only=False)["step1"]  # jsonl order
    # A training batch asks in any order: pair_ids are (dataset index, 1-based line).
    lines = [5, 1, 7, 3]
    chosen, rejected = store.lookup(torch.tensor([[0, k] for k in lines]))
    for i, k in enumerate(lines):
        assert abs(chosen[i].item() - golden["reference_chosen_logps"][k - 1].item()) < 1e-4
        assert abs(rejected[i].item() - golden["reference_rejected_logps"][k - 1].item()) < 1e-4
    assert chosen.dtype == torch.float32 and chosen.shape == (4,)

    again = rl.precompute(Unusable(), dataset_at(data, tokenizer), weights, cache)  # same key: read, not run
    assert np.array_equal(again.chosen, store.chosen) and again.path == store.path
    loaded = rl.load(store.path / "key.json")
    assert loaded.key == store.key and np.array_equal(loaded.rejected, store.rejected)

    with pytest.raises(rl.ReferenceStoreError, match=r"dataset 0 \('mpo_demo'\) line 9 is not in the precomputed"):
        store.lookup(torch.tensor([[0, 1], [0, 9]]))


def test_the_key_changes_with_the_weights_the_data_and_the_settings(setup) -> None:
    tmp, weights, data, tokenizer, model = setup
    dataset = dataset_at(data, tokenizer)
    key = rl.reference_key(weights, dataset, "float32")
    cache = tmp / "cache_b"
    rl.ReferenceLogps(key, np.zeros(1, np.int64), np.ones(1, np.int64), np.zeros(1, np.float32),
                      np.zeros(1, np.float32)).save(rl.store_path(cache, key))
    assert rl.cached(cache, key) is not None
    assert rl.key_digest(rl.reference_key(weights, dataset, "bfloat16")) != rl.key_digest(key)
    assert rl.key_digest(rl.reference_key(weights, dataset_at(data, tokenizer, 400), "float32")) != rl.key_digest(key)

    weight_file = next(weights.glob("*.safetensors"))
    st = weight_file.stat()
    os.utime(weight_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the weights were rewritten
    moved = rl.reference_key(weights, dataset, "float32")
    assert rl.cached(cache, moved) is None

    jsonl = data / "mpo_demo.jsonl"
    lines = jsonl.read_text().splitlines()
    lines[2] = lines[2].replace("What", "Which")
    jsonl.write_text("\n".join(lines) + "\n")  # one line edited
    assert rl.cached(cache, rl.reference_key(weights, dataset_at(data, tokenizer), "float32")) is None


def test_a_damaged_store_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(rl.ReferenceStoreError, match="not a precomputed reference store"):
        rl.load(tmp_path)
    store = rl.ReferenceLogps({"format": rl.FORMAT}, np.array([0, 0]), np.array([1, 2]), np.zeros(2, np.float32),
                              np.zeros(2, np.float32))
    path = store.save(tmp_path / "s")
    (path / "logps.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(rl.ReferenceStoreError, match="damaged precomputed reference store"):
        rl.load(path)


@pytest.mark.parametrize("n, world", [(7, 2), (5, 8), (0, 3), (100, 7)])
def test_rank_shares_cover_every_row_once_in_order(n: int, world: int) -> None:
    shares = [rl.rank_share(n, r, world) for r in range(world)]
    assert np.array_equal(np.concatenate(shares), np.arange(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.slow  # 2 processes (torchrun, gloo) each loading the model
def test_two_processes_compute_one_store_and_every_rank_gets_it(setup) -> None:
    import subprocess
    import sys
    from pathlib import Path

    tmp, weights, data, tokenizer, model = setup
    here = Path(__file__).parent
    out, cache = tmp / "two", tmp / "cache_two"
    out.mkdir()
    data2 = tmp / "data_two"  # the other tests edit `data`
    shutil.copytree(GOLDEN / "data", data2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(here.parent)}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                          str(here / "reference_logps_worker.py"), str(weights), str(data2), str(cache), str(out)],
                         cwd=here.parent, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0] == ranks[1]  # the same store on both ranks, read back the same
    assert ranks[0]["lines"] == list(range(1, 8)) and ranks[0]["again_chosen"] == ranks[0]["chosen"]
    golden = torch.load(GOLDEN / "mpo" / "results.pt", weights_only=False)["step1"]
    assert max(abs(a - b) for a, b in zip(ranks[0]["chosen"], golden["reference_chosen_logps"].tolist())) < 1e-4
    assert max(abs(a - b) for a, b in zip(ranks[0]["rejected"], golden["reference_rejected_logps"].tolist())) < 1e-4
    stores = list((cache / rl.STORE_DIR).iterdir())
    assert [p.name for p in stores] == [Path(ranks[0]["path"]).name]  # one directory, no partial left


def test_every_rank_runs_the_same_number_of_forwards(setup) -> None:
    """A sharded reference (ZeRO-3) gathers its weights in every forward: a rank with fewer pairs (or none) runs
    filler forwards until it has run as many as the others, and their results are dropped."""
    tmp, weights, data, tokenizer, model = setup
    dataset = dataset_at(tmp / "data_forwards" if (tmp / "data_forwards").exists() else
                         shutil.copytree(GOLDEN / "data", tmp / "data_forwards"), tokenizer)
    calls: list[int] = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        plain = rl.score(model, dataset, batch_size=2, rows=[4, 0, 2])
        assert len(calls) == 2
        calls.clear()
        padded = rl.score(model, dataset, batch_size=2, rows=[4, 0, 2], forwards=4)
        assert len(calls) == 4
        calls.clear()
        empty = rl.score(model, dataset, batch_size=2, rows=[], forwards=3)  # a rank without pairs
        assert len(calls) == 3 and len(empty["chosen_logp"]) == 0
    finally:
        handle.remove()
    for key in ("line", "chosen_logp", "rejected_logp", "chosen_tokens"):
        assert np.array_equal(plain[key], padded[key]), key
    assert plain["line"].tolist() == [5, 1, 3]  # in the order asked, whatever the batching
