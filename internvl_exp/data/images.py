"""Image loading and the per-tile transform (resize, optional JPEG re-encode, normalise)."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.4814546, 0.4578275, 0.40821073), (0.2686295, 0.2613025, 0.2757711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        return NORMALIZATION[name]
    except KeyError:
        raise ValueError(f"unknown normalize_type {name!r}; choose one of {sorted(NORMALIZATION)}") from None


def load_rgb(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def jpeg_reencode(image: Image.Image, rng: random.Random) -> Image.Image:
    """InternVL's `data_augment`: re-encode as JPEG at a random quality in [75, 100]."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=rng.randint(75, 100))
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def tiles_to_array(tiles: list[Image.Image], tile_size: int, normalize_type: str) -> np.ndarray:
    """(n, 3, tile_size, tile_size) float32, normalised."""
    mean, std = normalization(normalize_type)
    arr = np.stack(
        [
            np.asarray(t if t.size == (tile_size, tile_size) else t.resize((tile_size, tile_size), Image.Resampling.BICUBIC), dtype=np.float32)
            for t in tiles
        ]
    )
    arr /= 255.0
    arr -= np.asarray(mean, dtype=np.float32)
    arr /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
