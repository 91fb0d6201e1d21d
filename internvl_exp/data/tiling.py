"""InternVL's dynamic-resolution tiling.

The grid rule is the reference one (``find_closest_aspect_ratio`` in InternVL, the same choice as
transformers' ``GotOcr2ImageProcessor`` with ``crop_to_patches``): among grids with
``min_tiles <= cols*rows <= max_tiles`` (ordered by tile count), take the one whose aspect ratio is
closest to the image's; on an exact tie, move to the later (larger) grid when the image area is more
than half of that grid's tile area. The image is resized to the grid and cut row-major; a thumbnail of
the whole image follows when there is more than one tile.
"""

from __future__ import annotations

from functools import lru_cache

from PIL import Image


@lru_cache(maxsize=64)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) with min_tiles <= cols*rows <= max_tiles, by tile count, then by columns.

    The order only matters when two grids with the same tile count tie exactly on aspect-ratio distance
    (the image ratio is the midpoint of theirs): the earlier one wins. InternVL sorts a Python `set`,
    whose order for equal counts is an accident of hashing; transformers' GotOcr2ImageProcessor (what
    HF-native checkpoints use at inference) and InternVL's documentation use columns ascending, so we do.
    """
    grids = [(i, j) for i in range(1, max_tiles + 1) for j in range(1, max_tiles + 1) if min_tiles <= i * j <= max_tiles]
    return tuple(sorted(grids, key=lambda g: (g[0] * g[1], g[0])))


def choose_grid(width: int, height: int, min_tiles: int = 1, max_tiles: int = 12, tile_size: int = 448) -> tuple[int, int]:
    """The (cols, rows) grid InternVL picks for an image of `width` x `height` pixels."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff = diff
            best = (cols, rows)
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def tile_image(
    image: Image.Image,
    min_tiles: int = 1,
    max_tiles: int = 12,
    tile_size: int = 448,
    use_thumbnail: bool = True,
) -> list[Image.Image]:
    """Cut `image` into the chosen grid of `tile_size` tiles (row-major), plus the thumbnail if > 1 tile."""
    cols, rows = choose_grid(image.width, image.height, min_tiles, max_tiles, tile_size)
    resized = image.resize((cols * tile_size, rows * tile_size), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
        for r in range(rows)
        for c in range(cols)
    ]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile_size, tile_size), Image.Resampling.BICUBIC))
    return tiles
