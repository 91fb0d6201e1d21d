"""Real media files for the data tests: PNG images, an mp4 (PyAV), a gif and a frame folder.

Video frames are solid grey at a level that encodes the frame index (LEVEL0 + STEP * i), so a decoded
tile tells which frame it came from, even after lossy mpeg4 compression.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

LEVEL0, STEP = 10, 6


def level(i: int) -> int:
    return LEVEL0 + STEP * i


def write_image(path: Path, size=(64, 48), colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_video(path: Path, frames: int, fps: int = 10, size=(64, 48), codec: str = "mpeg4", gop: int | None = None) -> Path:
    """`gop`: frames between keyframes (None: the codec's default)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.bit_rate, stream.options = 4_000_000, {"qmax": "2"}  # near-lossless: grey levels survive
        if gop is not None:
            stream.codec_context.gop_size = gop
        for i in range(frames):
            arr = np.full((size[1], size[0], 3), level(i), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_gif(path: Path, frames: int, duration_ms: int = 100, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = [Image.new("RGB", size, (level(i),) * 3) for i in range(frames)]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=duration_ms, loop=0)
    return path


def write_frame_folder(folder: Path, frames: int, size=(40, 30)) -> Path:
    """Unpadded names (frame_1.png ... frame_12.png), so a plain string sort would be wrong."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        Image.new("RGB", size, (level(i),) * 3).save(folder / f"frame_{i + 1}.png")
    return folder


def frame_index(tile, normalize_type: str = "imagenet") -> int:
    """Which frame a (3, s, s) normalised tile shows, from its grey level."""
    from internvl_exp.data.images import normalization

    mean, std = normalization(normalize_type)
    arr = np.asarray(tile, dtype=np.float64)
    grey = np.mean([(arr[c].mean() * std[c] + mean[c]) * 255 for c in range(3)])
    return int(round((grey - LEVEL0) / STEP))


def pixels(item):
    """A dataset item's tiles as the model sees them (normalised float), via the collator's own path."""
    from internvl_exp.data.collator import pixel_values

    return pixel_values([item])


def write_jsonl(path: Path, rows: Iterable[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


def conv(*turns: str) -> list[dict]:
    return [{"from": ("human", "gpt")[i % 2], "value": t} for i, t in enumerate(turns)]
