"""Collation: batch > 1 with different tile counts, pad id from the tokenizer, attention mask from
lengths (token id 0 may be a real token), pixel_values in placeholder order."""

from __future__ import annotations

import pytest
import torch

from data_media import conv, write_image, write_jsonl
from internvl_exp.data.collator import Collator
from internvl_exp.data.dataset import ImageSettings, build_dataset
from internvl_exp.data.sources import load_entries
from internvl_exp.data.templates import IGNORE_INDEX


def _item(ids, labels=None, tiles=0, fill=0.0):
    out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels if labels is not None else ids)}
    if tiles:
        out["pixel_values"] = torch.full((tiles, 3, 4, 4), fill)
    return out


def test_token_id_zero_is_a_real_token_with_a_nonzero_pad_id():
    collator = Collator(pad_token_id=7)
    a = _item([0, 5, 0, 0], [IGNORE_INDEX, 5, 0, 0])  # id 0 is a real token here ("!" in Llama-3/Qwen vocabularies)
    b = _item([0, 3])
    out = collator([a, b])
    assert out["input_ids"].tolist() == [[0, 5, 0, 0], [0, 3, 7, 7]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, 5, 0, 0], [0, 3, IGNORE_INDEX, IGNORE_INDEX]]


def test_pad_id_equal_to_a_real_token_still_masks_by_length():
    # The tiny tokenizer pads with id 0; a real id 0 inside a sample must stay attended.
    out = Collator(pad_token_id=0)([_item([4, 0, 0]), _item([0])])
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pad_id_comes_from_the_tokenizer(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    from internvl_exp.models.tiny_tokenizer import ASSET_DIR

    tok = AutoTokenizer.from_pretrained(str(ASSET_DIR), pad_token="<|end|>")
    assert tok.pad_token_id != tokenizer.pad_token_id
    out = Collator(tok.pad_token_id)([_item([1, 2, 3]), _item([1])])
    assert out["input_ids"][1, 1:].tolist() == [tok.pad_token_id] * 2
    with pytest.raises(ValueError, match="no pad token"):
        Collator(None)


def test_batch_with_different_tile_counts_keeps_placeholder_order(tmp_path, tokenizer):
    write_image(tmp_path / "wide.png", (96, 32), (255, 0, 0))  # 3x1 + thumbnail = 4 tiles
    write_image(tmp_path / "one.png", (32, 32), (0, 255, 0))  # 1 tile
    write_image(tmp_path / "tall.png", (32, 64), (0, 0, 255))  # 1x2 + thumbnail = 3 tiles
    rows = [
        {"image": ["wide.png", "one.png"], "conversations": conv("<image>\n<image>\nQ?", "A.")},
        {"conversations": conv("Text only, and a longer question than the others?", "Sure.")},
        {"image": "tall.png", "conversations": conv("<image>\nQ?", "A.")},
    ]
    ann = write_jsonl(tmp_path / "c.jsonl", rows)
    entries = load_entries(None, {"c": {"annotation": str(ann), "root": str(tmp_path)}})
    ds, _ = build_dataset(entries, tokenizer, "internvl2_5", ImageSettings(tile_size=32, tokens_per_tile=4, max_dynamic_patch=6), 4096)
    items = [ds[i] for i in range(3)]
    out = Collator(tokenizer.pad_token_id)(items)
    lengths = [len(i["input_ids"]) for i in items]
    assert out["input_ids"].shape == (3, max(lengths))
    assert out["attention_mask"].sum(1).tolist() == lengths
    # Tiles in placeholder order: sample 0 (wide: 4, then one: 1), sample 1 (none), sample 2 (tall: 3).
    px = out["pixel_values"]
    assert px.shape == (8, 3, 32, 32)
    dominant = px.mean(dim=(2, 3)).argmax(dim=1).tolist()
    assert dominant == [0, 0, 0, 0, 1, 2, 2, 2]
    ctx = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert (out["input_ids"] == ctx).sum().item() == 8 * 4  # one span of tokens per tile, matching pixel_values


class _TileItems(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.tiles = [torch.randint(0, 256, (k % 3 + 1, 3, 8, 8), dtype=torch.uint8, generator=g) for k in range(n)]

    def __len__(self):
        return len(self.tiles)

    def __getitem__(self, i):
        return {"input_ids": torch.tensor([1, 2]), "labels": torch.tensor([1, 2]), "pixel_tiles": self.tiles[i], "pixel_norm": "clip"}


@pytest.mark.parametrize("norm", ["imagenet", "clip", "siglip"])
def test_uint8_tiles_are_normalised_exactly_once(norm):
    import numpy as np

    from internvl_exp.data.collator import pixel_values
    from internvl_exp.data.images import normalize_uint8

    tiles = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = pixel_values([{"pixel_tiles": tiles, "pixel_norm": norm}, {"pixel_values": torch.ones(1, 3, 8, 8)}])
    assert out.dtype == torch.float32 and out.shape == (3, 3, 8, 8)
    np.testing.assert_allclose(out[:2].numpy(), normalize_uint8(tiles.numpy(), norm), atol=1e-6)
    assert out[2].eq(1).all()  # already-normalised pixel_values pass through unchanged


def test_worker_batches_are_built_in_shared_memory():
    from internvl_exp.data.collator import pixel_values

    ds = _TileItems(6)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=Collator(pad_token_id=0))
    batches = list(loader)
    assert all(b["pixel_values"].is_shared() for b in batches)  # no extra copy to reach this process
    expected = pixel_values([ds[i] for i in range(6)])
    assert torch.equal(torch.cat([b["pixel_values"] for b in batches]), expected)
    assert not Collator(pad_token_id=0)([ds[0]])["pixel_values"].is_shared()  # in-process: ordinary memory
