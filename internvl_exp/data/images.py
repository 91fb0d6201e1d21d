"""Image loading and the per-tile transform (resize, optional JPEG re-encode, normalise).

Pixels: bicubic antialiased resize, by default PIL's, which is exactly what InternVL's own training code
computes (`dynamic_preprocess` + `build_transform`); torchvision's uint8 kernel on request
(`resize_backend="torch"`, as transformers' processor: faster, not the same pixels). Then
`(x / 255 - mean) / std` per channel, as float32 `(n_tiles, 3, tile, tile)`. The normalisation is folded into one multiply-add per channel on the uint8
tiles, which is the cheap way to do it in a data-loader worker.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

from internvl_exp.data.tiling import choose_grid

RESIZE_BACKENDS = ("pil", "torch")  # the first is the default
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


# Pillow's modes for 16-bit grayscale (how it opens a 16-bit gray PNG). Its convert("RGB") clips them at 255
# instead of scaling, which turns nearly every such image white (InternVL's loader has the same fault).
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def to_rgb(im: Image.Image, copy: bool = False) -> Image.Image:
    """`im` in RGB; 16-bit grayscale is scaled to 8 bits by round(v / 257) (65535 -> 255) first. An RGB image
    comes back as it is unless `copy` (needed when `im` is closed or seeked to another frame afterwards)."""
    if im.mode in SIXTEEN_BIT_MODES:
        v = np.asarray(im).astype(np.uint32)
        im = Image.fromarray(((v + 128) // 257).astype(np.uint8))  # == round(v / 257): no ties at integer v
    return im if im.mode == "RGB" and not copy else im.convert("RGB")


def load_rgb(path, exif_transpose: bool = False) -> Image.Image:
    """The decoded image in RGB (no extra copy when it already is RGB). Raises OSError on a broken file.

    `exif_transpose`: turn the image as its EXIF orientation tag says (data.exif_transpose); by default the
    pixels are used as stored, as InternVL's loader does."""
    with Image.open(path) as im:
        im.load()
        if exif_transpose:
            from PIL import ImageOps

            im = ImageOps.exif_transpose(im)
        return to_rgb(im)


def jpeg_reencode(image: Image.Image, rng: random.Random) -> Image.Image:
    """InternVL's `data_augment`: re-encode as JPEG at a random quality in [75, 100] (one draw per call)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=rng.randint(75, 100))
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def jpeg_tiles(u8: np.ndarray, rng: random.Random) -> np.ndarray:
    """Re-encode each (3, s, s) tile on its own, in order (tiles row-major, then the thumbnail): InternVL
    applies its transform, JPEG draw included, to each tile that `dynamic_preprocess` returns."""
    for k in range(len(u8)):
        u8[k] = np.asarray(jpeg_reencode(Image.fromarray(np.ascontiguousarray(u8[k].transpose(1, 2, 0))), rng)).transpose(2, 0, 1)
    return u8


def _scale_offset(normalize_type: str) -> tuple[np.ndarray, np.ndarray]:
    mean, std = normalization(normalize_type)
    std_arr = np.asarray(std, dtype=np.float64)
    scale = (1.0 / (255.0 * std_arr)).astype(np.float32).reshape(1, 3, 1, 1)
    offset = (-np.asarray(mean, dtype=np.float64) / std_arr).astype(np.float32).reshape(1, 3, 1, 1)
    return scale, offset


def normalize_uint8(tiles: np.ndarray, normalize_type: str) -> np.ndarray:
    """(n, 3, s, s) uint8 -> float32 `(x/255 - mean) / std`."""
    scale, offset = _scale_offset(normalize_type)
    out = tiles.astype(np.float32)
    np.multiply(out, scale, out=out)
    np.add(out, offset, out=out)
    return out


def tiles_to_array(tiles: list[Image.Image], tile_size: int, normalize_type: str) -> np.ndarray:
    """(n, 3, tile_size, tile_size) float32, normalised."""
    u8 = np.stack(
        [
            np.asarray(t if t.size == (tile_size, tile_size) else t.resize((tile_size, tile_size), Image.Resampling.BICUBIC))
            for t in tiles
        ]
    )
    return normalize_uint8(np.ascontiguousarray(u8.transpose(0, 3, 1, 2)), normalize_type)


def resize_rgb(image: Image.Image | np.ndarray, width: int, height: int, backend: str = "pil") -> np.ndarray:
    """Bicubic, antialiased resize of an RGB image to (height, width, 3) uint8.

    backend "pil" (default): PIL's resize, bit for bit what InternVL's own training code (and
    transformers' GotOcr2ImageProcessorPil) computes.
    backend "torch": torchvision's uint8 kernel, exactly what transformers' GotOcr2ImageProcessor (the
    HF-native InternVL processor) computes, and faster than PIL when fed a channels-last view. It is not
    InternVL's training pixels: Pillow picks the order of its two 1-D passes from the scale factors and
    rounds to uint8 between them, torchvision always goes horizontal first; on real photographs the two
    differ by up to ~13 uint8 levels on a few pixels (measured numbers in docs/data.md).
    """
    if backend == "pil":
        pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
        return np.asarray(pil.resize((width, height), Image.Resampling.BICUBIC))
    if backend != "torch":
        raise ValueError(f"unknown resize backend {backend!r}; choose one of {list(RESIZE_BACKENDS)}")
    import warnings

    import torch
    from torchvision.transforms.v2 import functional as F

    hwc = np.asarray(image)
    with warnings.catch_warnings():  # a read-only array is fine: the resize only reads it
        warnings.simplefilter("ignore", UserWarning)
        chw = torch.from_numpy(hwc).permute(2, 0, 1)  # a channels-last view: torch's fast uint8 path, no copy
    out = F.resize(chw, [height, width], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    return out.permute(1, 2, 0).numpy()


def image_to_tiles_u8(image: Image.Image, min_tiles: int, max_tiles: int, tile_size: int, use_thumbnail: bool,
                      backend: str = "pil", jpeg_rng: random.Random | None = None) -> np.ndarray:
    """InternVL's dynamic tiling (as `tiling.tile_image`) as uint8 (n, 3, s, s), cut from one resized array.
    With `jpeg_rng` (data_augment), each tile is then JPEG re-encoded with its own quality draw."""
    cols, rows = choose_grid(image.width, image.height, min_tiles, max_tiles, tile_size)
    s = tile_size
    source = np.asarray(image) if backend == "torch" else image
    grid = resize_rgb(source, cols * s, rows * s, backend)  # (rows*s, cols*s, 3)
    n = cols * rows
    thumb = use_thumbnail and n > 1
    u8 = np.empty((n + thumb, 3, s, s), dtype=np.uint8)
    # (rows, s, cols, s, 3) -> (rows, cols, 3, s, s): tiles in row-major order, channels first.
    u8[:n] = grid.reshape(rows, s, cols, s, 3).transpose(0, 2, 4, 1, 3).reshape(n, 3, s, s)
    if thumb:
        u8[n] = resize_rgb(source, s, s, backend).transpose(2, 0, 1)
    return u8 if jpeg_rng is None else jpeg_tiles(u8, jpeg_rng)


def image_to_tiles(image: Image.Image, min_tiles: int, max_tiles: int, tile_size: int, use_thumbnail: bool,
                   normalize_type: str, backend: str = "pil") -> np.ndarray:
    """InternVL's dynamic tiling straight to normalised float32 (n, 3, s, s).

    With backend="pil" the pixels equal `tiles_to_array(tile_image(...))`; with "torch" they equal
    transformers' GotOcr2ImageProcessor.
    """
    return normalize_uint8(image_to_tiles_u8(image, min_tiles, max_tiles, tile_size, use_thumbnail, backend), normalize_type)


def frames_to_tiles_u8(frames: list[Image.Image], tile_size: int, backend: str = "pil",
                       jpeg_rng: random.Random | None = None) -> np.ndarray:
    """Video frames, one tile each (resized to the tile, no dynamic tiling), uint8 (n, 3, s, s). With
    `jpeg_rng`, each frame is re-encoded before its resize, as InternVL's transform does (JPEG, then Resize)."""
    if jpeg_rng is not None:
        frames = [jpeg_reencode(f, jpeg_rng) for f in frames]
    return np.stack([resize_rgb(f, tile_size, tile_size, backend).transpose(2, 0, 1) for f in frames])


def normalize_into(out, tiles_u8, normalize_type: str) -> None:
    """Write `(x/255 - mean) / std` of uint8 tiles (n, 3, s, s) into the float tensor `out` (same shape)."""
    import torch

    scale, offset = (torch.from_numpy(a) for a in _scale_offset(normalize_type))
    out.copy_(tiles_u8)
    out.mul_(scale).add_(offset)
