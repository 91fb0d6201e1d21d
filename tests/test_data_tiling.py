"""Tiling and image transforms: the grid rule (against a transcription of the reference rule and against
transformers' GotOcr2 image processors), tile layout, pixel values, normalisation, JPEG augmentation,
per-dataset tile budgets and the multi-image split."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from internvl_exp.data.images import NORMALIZATION, image_to_tiles, jpeg_reencode, tiles_to_array
from internvl_exp.data.tiling import choose_grid, tile_image

# Pixel tolerance against transformers (documented in docs/data.md). Each of our two resize backends
# reproduces one of transformers' two GotOcr2 image processors up to float rounding (max |diff| <= 1e-5):
#   resize_backend="pil" (default) == GotOcr2ImageProcessorPil (PIL, InternVL's own training pixels)
#   resize_backend="torch"         == GotOcr2ImageProcessor (torchvision backend, the HF-native processor)
# Across backends on these smooth synthetic images values differ by at most 2 uint8 levels, i.e.
# 2 / (255 * min(std)) = 0.0350 for ImageNet std, and on average by under 0.1 level (0.00175). Real
# photographs differ more (tests/test_data_pixels.py).
SAME_KERNEL_TOL = 1e-5
CROSS_MAX_LEVELS = 2
CROSS_MEAN_LEVELS = 0.1


def reference_grid(width, height, min_num, max_num, image_size):
    """A transcription of the reference rule (internvl-sft.md §2.5), written independently of ours.

    Candidates in the documented order (tile count, then columns: 1x1, 1x2, 2x1, 1x3, 3x1, 1x4, 2x2, 4x1...).
    """
    ratios = []
    for n in range(min_num, max_num + 1):
        ratios += [(i, n // i) for i in range(1, n + 1) if n % i == 0]
    aspect = width / height
    best_diff, best = float("inf"), (1, 1)
    for r in ratios:
        diff = abs(aspect - r[0] / r[1])
        if diff < best_diff:
            best_diff, best = diff, r
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * r[0] * r[1]:
            best = r
    return best


def random_sizes(n, seed=0):
    rng = random.Random(seed)
    sizes = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            sizes.append((rng.randint(1, 4000), rng.randint(1, 4000)))
        elif kind < 0.8:  # exact grid ratios at many scales: the tie-break path
            c, r, k = rng.randint(1, 6), rng.randint(1, 6), rng.randint(1, 400)
            sizes.append((c * k, r * k))
        else:  # extreme aspect ratios
            long, short = rng.randint(500, 8000), rng.randint(1, 60)
            sizes.append((long, short) if rng.random() < 0.5 else (short, long))
    return sizes


LIMITS = [(1, 6), (1, 12), (1, 1), (2, 9), (1, 40), (4, 4)]
TILE_SIZES = [448, 64, 336]


def test_choose_grid_matches_reference_rule_on_many_sizes():
    checked = ties = 0
    for k, (w, h) in enumerate(random_sizes(4000)):
        lo, hi = LIMITS[k % len(LIMITS)]
        s = TILE_SIZES[k % len(TILE_SIZES)]
        got = choose_grid(w, h, lo, hi, s)
        assert got == reference_grid(w, h, lo, hi, s), (w, h, lo, hi, s)
        assert lo <= got[0] * got[1] <= hi
        checked += 1
        ties += (w * h) != 0 and (w % h == 0 or h % w == 0)
    assert checked == 4000 and ties > 500  # the tie-break branch was exercised a lot


def test_choose_grid_matches_transformers_got_ocr2_processor():
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    for k, (w, h) in enumerate(random_sizes(3000, seed=1)):
        lo, hi = LIMITS[k % len(LIMITS)]
        s = TILE_SIZES[k % len(TILE_SIZES)]
        # transformers takes (height, width) and returns (columns, rows).
        assert choose_grid(w, h, lo, hi, s) == tuple(get_optimal_tiled_canvas((h, w), (s, s), lo, hi)), (w, h, lo, hi, s)


def test_documented_candidate_order():
    from internvl_exp.data.tiling import candidate_grids

    assert candidate_grids(1, 6) == ((1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (2, 2), (4, 1), (1, 5), (5, 1),
                                     (1, 6), (2, 3), (3, 2), (6, 1))
    # Equal tile count and an exact midpoint tie (2.5 is halfway between 2x2 and 4x1): the earlier grid wins.
    assert choose_grid(110, 44, 4, 4, 336) == (2, 2)


def test_tie_break_prefers_larger_grid_only_for_large_images():
    # A square image ties 1x1, 2x2 (and 3x3 ...): a large one takes the larger grid, a small one does not.
    assert choose_grid(100, 100, 1, 12, 448) == (1, 1)
    assert choose_grid(1000, 1000, 1, 12, 448) == (3, 3)
    assert choose_grid(900, 450, 1, 12, 448) == (2, 1)
    assert choose_grid(1800, 900, 1, 12, 448) == (4, 2)


def test_choose_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        choose_grid(0, 10)
    with pytest.raises(ValueError, match="min_tiles"):
        choose_grid(10, 10, 3, 2)


def _quadrants(w, h):
    """An image whose four quadrants have distinct colours (to check row-major tile order)."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 0)
    return Image.fromarray(a)


def test_tile_image_row_major_with_thumbnail_only_when_more_than_one_tile():
    tiles = tile_image(_quadrants(128, 128), 1, 4, 64)  # 2x2 grid + thumbnail
    assert len(tiles) == 5 and all(t.size == (64, 64) for t in tiles)
    centres = [t.getpixel((32, 32)) for t in tiles[:4]]
    assert centres == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    assert len(tile_image(_quadrants(40, 40), 1, 4, 64)) == 1  # one tile: no thumbnail
    assert len(tile_image(_quadrants(128, 128), 1, 4, 64, use_thumbnail=False)) == 4


def _smooth_image(rng, w, h):
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)


def test_fast_tiles_equal_tile_image_then_normalise():
    rng = np.random.default_rng(0)
    level = 1 / (255 * 0.224)
    for w, h in [(130, 70), (64, 64), (300, 40), (50, 200)]:
        img = _smooth_image(rng, w, h)
        for norm in NORMALIZATION:
            slow = tiles_to_array(tile_image(img, 1, 6, 64), 64, norm)
            pil = image_to_tiles(img, 1, 6, 64, True, norm, backend="pil")
            fast = image_to_tiles(img, 1, 6, 64, True, norm, backend="torch")
            assert pil.dtype == fast.dtype == np.float32 and pil.shape == fast.shape == slow.shape
            np.testing.assert_allclose(pil, slow, atol=1e-6)
            assert np.abs(fast - slow).max() <= CROSS_MAX_LEVELS * level + 1e-5
    with pytest.raises(ValueError, match="unknown resize backend"):
        image_to_tiles(img, 1, 6, 64, True, "imagenet", backend="cv2")


@pytest.mark.parametrize("size", [(800, 600), (300, 1000), (448, 448), (1500, 400), (97, 61), (1000, 1000)])
def test_pixel_values_match_transformers_processors(size):
    from transformers import GotOcr2ImageProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    mean, std = NORMALIZATION["imagenet"]
    kw = dict(size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1, max_patches=6,
              image_mean=list(mean), image_std=list(std), resample=Image.Resampling.BICUBIC)
    img = _smooth_image(np.random.default_rng(sum(size)), *size)
    ours_torch = image_to_tiles(img, 1, 6, 448, True, "imagenet", backend="torch")
    ours_pil = image_to_tiles(img, 1, 6, 448, True, "imagenet")  # pil, the default
    tv = GotOcr2ImageProcessor(**kw)(images=[img], return_tensors="np")
    pil = GotOcr2ImageProcessorPil(**kw)(images=[img], return_tensors="np")
    cols, rows = choose_grid(*size, 1, 6, 448)
    n = cols * rows + (cols * rows > 1)
    assert ours_torch.shape == ours_pil.shape == tv["pixel_values"].shape == pil["pixel_values"].shape == (n, 3, 448, 448)
    assert list(tv["num_patches"]) == list(pil["num_patches"]) == [n]
    assert np.abs(ours_torch - tv["pixel_values"]).max() <= SAME_KERNEL_TOL
    assert np.abs(ours_pil - pil["pixel_values"]).max() <= SAME_KERNEL_TOL
    level = 1 / (255 * min(std))
    cross = np.abs(ours_torch - pil["pixel_values"])
    assert cross.max() <= CROSS_MAX_LEVELS * level + 1e-5
    assert cross.mean() <= CROSS_MEAN_LEVELS * level


@pytest.mark.parametrize("norm", ["imagenet", "clip", "siglip"])
def test_normalisation_constants(norm):
    mean, std = {
        "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        "clip": ((0.4814546, 0.4578275, 0.40821073), (0.2686295, 0.2613025, 0.2757711)),
        "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    }[norm]
    img = Image.new("RGB", (64, 64), (0, 128, 255))
    arr = image_to_tiles(img, 1, 1, 64, True, norm)
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), mean, std)]
    for c in range(3):
        np.testing.assert_allclose(arr[0, c], expected[c], atol=1e-5)
    with pytest.raises(ValueError, match="unknown normalize_type"):
        image_to_tiles(img, 1, 1, 64, True, "imagenet21k")


def test_jpeg_reencode_is_seeded_and_uses_quality_75_to_100():
    img = _smooth_image(np.random.default_rng(3), 96, 96)
    a = np.asarray(jpeg_reencode(img, random.Random(7)))
    b = np.asarray(jpeg_reencode(img, random.Random(7)))
    assert np.array_equal(a, b)
    qualities = set()
    for seed in range(60):
        q = random.Random(seed).randint(75, 100)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        assert np.array_equal(np.asarray(jpeg_reencode(img, random.Random(seed))), np.asarray(Image.open(buf).convert("RGB")))
        qualities.add(q)
    assert min(qualities) >= 75 and max(qualities) <= 100 and len(qualities) > 10
    assert not np.array_equal(a, np.asarray(img))  # it really re-encodes


# --- through the dataset: data_augment, per-dataset max_dynamic_patch, multi-image split -------------

def _dataset(tmp_path, tokenizer, rows, images, **spec):
    from internvl_exp.data.dataset import ImageSettings, build_dataset
    from internvl_exp.data.sources import load_entries

    root = tmp_path / "media"
    root.mkdir(exist_ok=True)
    for name, (w, h) in images.items():
        _smooth_image(np.random.default_rng(w * h), w, h).save(root / name)
    ann = tmp_path / f"ann{len(list(tmp_path.glob('*.jsonl')))}.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    entries = load_entries(None, {"ds": {"annotation": str(ann), "root": str(root), **spec}})
    settings = ImageSettings(tile_size=32, tokens_per_tile=4, max_dynamic_patch=6)
    return build_dataset(entries, tokenizer, "internvl2_5", settings, max_seq_length=4096)[0]


def _conv(q="<image>\nWhat?"):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": "That."}]


def test_per_dataset_max_dynamic_patch_overrides_model_default(tmp_path, tokenizer):
    rows = [{"image": "wide.png", "conversations": _conv()}]
    default = _dataset(tmp_path, tokenizer, rows, {"wide.png": (600, 100)})
    capped = _dataset(tmp_path, tokenizer, rows, {"wide.png": (600, 100)}, max_dynamic_patch=2)
    assert default.samples[0].num_tiles == [7]  # 6x1 grid + thumbnail
    assert capped.samples[0].num_tiles == [3]  # 2x1 grid + thumbnail
    assert capped[0]["pixel_tiles"].shape[0] == 3


def test_multi_image_budget_split(tmp_path, tokenizer):
    images = {f"i{k}.png": (300, 100) for k in range(8)}
    three = [{"image": [f"i{k}.png" for k in range(3)], "conversations": _conv("<image><image><image>\nCompare.")}]
    ds = _dataset(tmp_path, tokenizer, three, images)
    assert ds.samples[0].max_tiles_per_image == 2  # max(1, 6 // 3)
    assert ds.samples[0].num_tiles == [3, 3, 3]  # 2x1 + thumbnail each
    eight = [{"image": list(images), "conversations": _conv("<image>" * 8 + "\nCompare.")}]
    ds = _dataset(tmp_path, tokenizer, eight, images)
    assert ds.samples[0].max_tiles_per_image == 1  # max(1, 6 // 8)
    assert ds.samples[0].num_tiles == [1] * 8
    item = ds[0]
    assert item["pixel_tiles"].shape[0] == 8
    assert (item["input_ids"] == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")).sum() == 8 * 4


def test_data_augment_is_seeded_per_sample(tmp_path, tokenizer):
    rows = [{"image": "a.png", "conversations": _conv()}] * 2
    plain = _dataset(tmp_path, tokenizer, rows, {"a.png": (90, 60)})
    aug = _dataset(tmp_path, tokenizer, rows, {"a.png": (90, 60)}, data_augment=True)
    aug2 = _dataset(tmp_path, tokenizer, rows, {"a.png": (90, 60)}, data_augment=True)
    assert not np.array_equal(plain[0]["pixel_tiles"].numpy(), aug[0]["pixel_tiles"].numpy())
    assert np.array_equal(aug[0]["pixel_tiles"].numpy(), aug2[0]["pixel_tiles"].numpy())  # reproducible
    assert np.array_equal(plain[0]["pixel_tiles"].numpy(), plain[1]["pixel_tiles"].numpy())


def test_data_augment_draws_change_with_the_epoch(tmp_path, tokenizer):
    rows = [{"image": "a.png", "conversations": _conv()}]
    aug = _dataset(tmp_path, tokenizer, rows, {"a.png": (90, 60)}, data_augment=True)
    per_epoch = []
    for epoch in range(4):
        aug.set_epoch(epoch)
        per_epoch.append(aug[0]["pixel_tiles"].numpy())
    aug.set_epoch(2)
    assert np.array_equal(aug[0]["pixel_tiles"].numpy(), per_epoch[2])  # the same epoch draws the same
    assert any(not np.array_equal(per_epoch[0], other) for other in per_epoch[1:])


@pytest.mark.slow
def test_trainer_hands_the_epoch_to_the_dataset(tmp_path, tokenizer, demo_dir):
    """The real Trainer (through accelerate's DataLoaderShard.set_epoch) reaches SupervisedDataset.set_epoch."""
    from conftest import compose
    from internvl_exp.data.collator import Collator
    from internvl_exp.data.from_config import build_from_config
    from internvl_exp.models.loading import load_model
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.args import training_arguments
    from internvl_exp.train.recipe.trainer import InternVLTrainer
    from internvl_exp.models.registry import get_family

    cfg = compose(["data.datasets={}", "trainer.max_steps=null", "trainer.num_train_epochs=2",
                   "trainer.per_device_train_batch_size=64", "trainer.save_final=false",
                   "trainer.eval_strategy=no"], tmp_path, demo_dir)
    dataset, _ = build_from_config(cfg, tokenizer, 16)
    seen = []
    original = dataset.set_epoch
    dataset.set_epoch = lambda epoch: (seen.append(epoch), original(epoch))
    args = training_arguments(cfg, RunDir(tmp_path / "run"))
    args.disable_tqdm = True
    trainer = InternVLTrainer(model=load_model(cfg.model, tokenizer), args=args, train_dataset=dataset,
                              data_collator=Collator(tokenizer.pad_token_id), family=get_family(cfg.model.family),
                              optimizer_config=cfg.optimizer)
    trainer.train()
    assert sorted(set(seen)) == [0, 1] and seen[-1] == 1 and dataset.epoch == 1


def test_resize_backend_setting_reaches_the_pixels(tmp_path, tokenizer):
    from conftest import compose
    from internvl_exp.data.dataset import ImageSettings
    from internvl_exp.data.from_config import image_settings
    from internvl_exp.data.images import load_rgb, normalize_uint8

    rows = [{"image": "a.png", "conversations": _conv()}]
    by_backend = {}
    for backend in ("torch", "pil"):
        ds = _dataset(tmp_path, tokenizer, rows, {"a.png": (90, 60)})
        ds.settings = ImageSettings(tile_size=32, tokens_per_tile=4, max_dynamic_patch=6, resize_backend=backend)
        by_backend[backend] = normalize_uint8(ds[0]["pixel_tiles"].numpy(), "imagenet")
    img = load_rgb(tmp_path / "media" / "a.png")
    np.testing.assert_allclose(by_backend["pil"], tiles_to_array(tile_image(img, 1, 6, 32), 32, "imagenet"), atol=1e-6)
    assert not np.array_equal(by_backend["pil"], by_backend["torch"])  # really two kernels
    assert image_settings(compose([]), 16).resize_backend == "pil"  # the default: InternVL's pixels
    assert image_settings(compose(["data.resize_backend=torch"]), 16).resize_backend == "torch"
    with pytest.raises(ValueError, match="data.resize_backend must be one of"):
        ImageSettings(tile_size=32, tokens_per_tile=4, resize_backend="cv2")
