"""Tile geometry: pure formulas, no imports from the package (config resolution, data planning, conversion and
the model builders all ask these one functions)."""

from __future__ import annotations


def tokens_per_tile(image_size: int, patch_size: int, downsample_ratio: float) -> int:
    """Image tokens one tile becomes: (image_size / patch_size)^2 patches, pixel-shuffled by downsample_ratio^2
    (448 px, 14 px patches, 0.5 -> 256)."""
    return int((image_size // patch_size) ** 2 * downsample_ratio**2)
