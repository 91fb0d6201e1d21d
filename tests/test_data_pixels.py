"""The default pixels are InternVL's training pixels, bit for bit, on real photographs; data_augment re-encodes
each tile with its own JPEG quality draw, in InternVL's order.

The oracle is a transcription of InternVL's own path (internvl-sft.md §2.4-2.5): `dynamic_preprocess` (PIL
resize of the whole image to the grid with PIL's default filter, row-major crops, then the thumbnail) and
`build_transform` (torchvision's Resize((s, s), BICUBIC) on each PIL tile, ToTensor, Normalize).

Photographs: matplotlib's `grace_hopper.jpg` (matplotlib is a dependency) cut into crops of many sizes and
aspect ratios (crops keep the camera's pixels; no resampling), plus scikit-image's sample photographs
when scikit-image is installed (an optional test extra).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from data_media import conv, write_jsonl
from internvl_exp.data.images import NORMALIZATION, image_to_tiles, image_to_tiles_u8
from test_data_tiling import reference_grid

# (left, top, width, height) crops of the 512x600 photograph: wide, tall, square, tiny, odd sizes.
CROPS = [(0, 0, 512, 600), (0, 100, 512, 150), (200, 0, 100, 600), (50, 50, 300, 300), (13, 7, 97, 61),
         (0, 300, 512, 200), (100, 0, 250, 600), (0, 0, 512, 60), (31, 17, 449, 451), (0, 0, 40, 580),
         (5, 5, 333, 222), (0, 0, 511, 599)]
TILES = [(448, 6), (224, 12), (64, 6)]  # (tile size, max tiles): upscaling, mixed, and downscaling cases


def _photographs() -> list[tuple[str, Image.Image]]:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = Image.open(f).convert("RGB")
    photos = [(f"grace_hopper[{l},{t},{w}x{h}]", hopper.crop((l, t, l + w, t + h))) for l, t, w, h in CROPS]
    try:  # optional extra photographs (scikit-image ships them in its wheel)
        from skimage import data as skdata
    except ImportError:
        return photos
    for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left"):
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            arr = loader()
        except Exception:  # a sample that must be downloaded: not in the wheel, so not used
            continue
        photos.append((name, Image.fromarray(arr[0] if isinstance(arr, tuple) else arr).convert("RGB")))
    return photos


PHOTOS = _photographs()


def internvl_tiles(image: Image.Image, max_num: int, size: int, use_thumbnail: bool = True) -> list[Image.Image]:
    """InternVL's dynamic_preprocess, transcribed (the grid from the reference rule of test_data_tiling)."""
    cols, rows = reference_grid(image.width, image.height, 1, max_num, size)
    resized = image.resize((size * cols, size * rows))  # PIL's default filter: bicubic for RGB
    tiles = [resized.crop((c * size, r * size, (c + 1) * size, (r + 1) * size)) for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((size, size)))
    return tiles


def internvl_transform(size: int, norm: str):
    """InternVL's build_transform(is_train=False)."""
    import torchvision.transforms as T
    from torchvision.transforms.functional import InterpolationMode

    mean, std = NORMALIZATION[norm]
    return T.Compose([T.Lambda(lambda img: img.convert("RGB")), T.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
                      T.ToTensor(), T.Normalize(mean=mean, std=std)])


def test_the_photographs_are_real_and_varied():
    assert len(PHOTOS) >= 12
    hopper = PHOTOS[0][1]
    arr = np.asarray(hopper)
    assert hopper.size == (512, 600) and len(np.unique(arr.reshape(-1, 3), axis=0)) > 20000  # a photograph, not a gradient


@pytest.mark.parametrize("size,max_num", TILES)
def test_default_pixels_equal_internvl_bit_for_bit_on_photographs(size, max_num):
    transform = internvl_transform(size, "imagenet")
    worst_float = 0.0
    for name, photo in PHOTOS:
        ref_tiles = internvl_tiles(photo, max_num, size)
        ours = image_to_tiles_u8(photo, 1, max_num, size, True)  # the default backend
        ref_u8 = np.stack([np.asarray(t).transpose(2, 0, 1) for t in ref_tiles])
        assert ours.shape == ref_u8.shape, name
        assert np.array_equal(ours, ref_u8), f"{name}: {np.abs(ours.astype(int) - ref_u8).max()} levels off"
        ref_float = torch.stack([transform(t) for t in ref_tiles]).numpy()
        worst_float = max(worst_float, float(np.abs(image_to_tiles(photo, 1, max_num, size, True, "imagenet") - ref_float).max()))
    assert worst_float <= 1e-6  # the normalisation is one multiply-add instead of (x/255 - m)/s: float rounding only


def test_the_torch_backend_differs_from_internvl_on_photographs_by_the_documented_amount():
    """`resize_backend=torch` is the opt-in fast path; docs/data.md states how far it is from InternVL's pixels."""
    worst, diffs = 0, []
    for name, photo in PHOTOS:
        for size, max_num in TILES:
            ref = image_to_tiles_u8(photo, 1, max_num, size, True, "pil")
            fast = image_to_tiles_u8(photo, 1, max_num, size, True, "torch")
            d = np.abs(fast.astype(np.int16) - ref)
            worst = max(worst, int(d.max()))
            diffs.append(d.mean())
    print(f"torch vs InternVL on {len(PHOTOS) * len(TILES)} photo cases: max {worst} levels, mean {np.mean(diffs):.3f}")
    assert 2 < worst <= 20 and np.mean(diffs) < 0.5


def test_through_the_dataset_the_default_is_internvl_and_data_augment_draws_per_tile(tmp_path, tokenizer):
    from internvl_exp.data.dataset import ImageSettings, build_dataset
    from internvl_exp.data.sources import load_entries

    name, photo = PHOTOS[1]  # a wide crop: 3x1 grid + thumbnail at 64 px
    photo.save(tmp_path / "photo.png")
    write_jsonl(tmp_path / "d.jsonl", [{"image": "photo.png", "conversations": conv("<image>\nWhat?", "A.")}] * 3)
    entries = lambda augment: load_entries(None, {"d": {"annotation": str(tmp_path / "d.jsonl"), "root": str(tmp_path),
                                                        "data_augment": augment}})
    s = ImageSettings(tile_size=64, tokens_per_tile=4, max_dynamic_patch=6)
    plain, _ = build_dataset(entries(False), tokenizer, "internvl2_5", s, 4096)
    tiles = internvl_tiles(Image.open(tmp_path / "photo.png").convert("RGB"), 6, 64)
    assert len(tiles) == 4
    assert np.array_equal(plain[0]["pixel_tiles"].numpy(), np.stack([np.asarray(t).transpose(2, 0, 1) for t in tiles]))

    aug, _ = build_dataset(entries(True), tokenizer, "internvl2_5", s, 4096, seed=5)
    import io

    for position in range(3):
        # InternVL: the transform (JPEG at a random quality 75..100) runs on each tile in order, thumbnail last.
        rng = random.Random(f"5-0-{position}")  # the sample's seeded stream (data.seed, epoch, position)
        expected = []
        for t in tiles:
            buf = io.BytesIO()
            t.save(buf, format="JPEG", quality=rng.randint(75, 100))
            expected.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).transpose(2, 0, 1))
        assert np.array_equal(aug[position]["pixel_tiles"].numpy(), np.stack(expected))
