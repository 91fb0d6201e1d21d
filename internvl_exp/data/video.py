"""Video samples: probing, frame sampling and frame loading for the three sources InternVL accepts.

A `video` path is one of
  * a video file (mp4, avi, mkv, webm, ...), decoded with PyAV;
  * a folder of frame images (a path ending in `/`, or any directory), frames in natural name order;
  * a `.gif`, decoded with PIL.

Sampling follows InternVL's `get_frame_indices`: the frames of the (optional) clip are split into `n`
equal segments and one frame is taken per segment, at random ("rand") or at the segment's middle
("middle"). Unlike InternVL, a video shorter than `n` frames yields fewer frames instead of repeating
its last frame (repeats cost tokens and add nothing). The number of frames is fixed when a sample is
planned (it decides the token length); which frames are taken is decided when it is loaded.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from internvl_exp.data.images import to_rgb

FRAME_SAMPLING = ("rand", "middle")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class VideoError(ValueError):
    """A video that cannot be read (the message says which file and why)."""


@dataclass(frozen=True)
class VideoInfo:
    kind: str  # "file" | "folder" | "gif"
    first: int  # index of the first frame of the clip
    count: int  # frames in the clip (the whole video without a clip)


def video_kind(path: Path, raw: str) -> str:
    if raw.endswith("/") or path.is_dir():
        return "folder"
    if path.suffix.lower() == ".gif":
        return "gif"
    return "file"


def _natural_key(name: str) -> list:
    # "frame_2" sorts before "frame_10" whether or not the numbers are zero-padded.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def folder_frames(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: _natural_key(p.name))


def _clip_range(total: int, fps: float, clip: Sequence[float] | None) -> tuple[int, int]:
    """(first, count) of the frames whose time falls in [start, end)."""
    if clip is None:
        return 0, total
    start, end = clip
    first = max(0, int(math.floor(start * fps + 1e-6)))
    last = min(total, int(math.ceil(end * fps - 1e-6)))
    return first, max(0, last - first)


def _gif_times_ms(im: Image.Image) -> list[int]:
    """Start time (ms, exact integers) of each gif frame, from the per-frame durations (100 ms when absent)."""
    times, t = [], 0
    for i in range(im.n_frames):
        im.seek(i)
        times.append(t)
        t += int(im.info.get("duration") or 100)
    return times


def probe_video(path: Path, raw: str, clip: Sequence[float] | None = None) -> VideoInfo:
    """How many frames the clip has, from metadata where possible (no full decode of video files)."""
    kind = video_kind(path, raw)
    if kind == "folder":
        # Frame folders carry no timing, so a clip cannot be applied (InternVL ignores it too).
        n = len(folder_frames(path))
        return VideoInfo(kind, 0, n)
    if kind == "gif":
        try:
            with Image.open(path) as im:
                times = _gif_times_ms(im)
        except OSError as e:
            raise VideoError(f"cannot read gif {path}: {e}") from e
        if clip is None:
            return VideoInfo(kind, 0, len(times))
        inside = [i for i, t in enumerate(times) if clip[0] * 1000 <= t < clip[1] * 1000]
        return VideoInfo(kind, inside[0] if inside else 0, len(inside))
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            total = stream.frames
            if not total and stream.duration and stream.time_base:  # no count stored: from the duration (header only)
                total = int(round(float(stream.duration * stream.time_base) * fps))
            if not total and container.duration:
                total = int(round(container.duration / 1_000_000 * fps))
            if not total:  # no count and no duration: count the packets that hold a frame (reads the file)
                total = sum(1 for p in container.demux(stream) if p.size)
    except VideoError:
        raise
    except Exception as e:  # PyAV raises its own error types (InvalidDataError, ...), all OSError-like
        raise VideoError(f"cannot open video {path}: {e}") from e
    first, count = _clip_range(total, fps, clip)
    return VideoInfo(kind, first, count)


def frame_indices(count: int, n: int, sampling: str, rng: random.Random) -> list[int]:
    """`n` frame indices in [0, count): one per equal segment, random or middle (n <= count)."""
    if sampling not in FRAME_SAMPLING:
        raise ValueError(f"data.frame_sampling must be one of {FRAME_SAMPLING}, got {sampling!r}")
    n = min(n, count)
    bounds = [round(k * count / n) for k in range(n + 1)]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        hi = max(hi, lo + 1)
        out.append(rng.randrange(lo, hi) if sampling == "rand" else (lo + hi - 1) // 2)
    return out


def load_frames(path: Path, raw: str, info: VideoInfo, indices: Sequence[int]) -> list[Image.Image]:
    """RGB frames at `indices` (relative to the clip start), in order."""
    wanted = [info.first + i for i in indices]
    if info.kind in ("folder", "gif"):
        try:
            return _load_image_frames(path, info.kind, wanted)
        except (OSError, IndexError, EOFError, SyntaxError) as e:
            raise VideoError(f"cannot read frames of {path}: {e}") from e
    try:
        picked, _ = decode_frames(path, wanted)
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(f"cannot decode video {path}: {e}") from e
    return [picked[i] for i in wanted]


def decode_frames(path: Path, wanted: Sequence[int]) -> tuple[dict[int, Image.Image], int]:
    """The frames at `wanted` (absolute frame indices) and how many frames were decoded to get them.

    Seeks (to the keyframe before each target, by timestamp) instead of decoding from the start, and keeps
    decoding forward when the next target is closer than the keyframe spacing seen so far. Container frame
    counts can overstate by a frame or two: an index past the end takes the last frame.
    """
    import av

    targets = sorted(set(wanted))
    picked: dict[int, Image.Image] = {}
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        tb = float(stream.time_base or 0)
        start = stream.start_time or 0
        frames = None
        current, gop, last_key, latest = -1, 0, None, None
        for t in targets:
            if t in picked:
                continue
            if frames is None or (tb and t - current > max(gop, 1)):
                if tb:
                    container.seek(start + int(t / (fps * tb)), stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
            for frame in frames:
                decoded += 1
                if frame.pts is None or not tb:  # no timestamps: count frames from the start instead
                    current += 1
                else:
                    current = int(round((frame.pts - start) * tb * fps))
                if frame.key_frame:
                    if last_key is not None and current > last_key:
                        gop = current - last_key
                    last_key = current
                latest = frame
                if current >= t:
                    image = frame.to_image()
                    for u in targets:
                        if u not in picked and u <= current:
                            picked[u] = image
                    break
            else:  # the end of the stream
                break
        if latest is None:
            raise VideoError(f"video {path} decoded to no frames")
        tail = latest.to_image()
        for u in targets:
            picked.setdefault(u, tail)
    return picked, decoded


def _load_image_frames(path: Path, kind: str, wanted: Sequence[int]) -> list[Image.Image]:
    out = []
    if kind == "folder":
        files = folder_frames(path)
        for i in wanted:
            with Image.open(files[i]) as im:
                out.append(to_rgb(im, copy=True))
        return out
    with Image.open(path) as im:
        for i in wanted:
            im.seek(i)
            out.append(to_rgb(im, copy=True))
    return out


def expand_video_placeholder(value: str, num_frames: int) -> str:
    """`<video>` -> `Frame-1: <image>\\nFrame-2: <image>...` (InternVL's expansion)."""
    frames = "\n".join(f"Frame-{i + 1}: <image>" for i in range(num_frames))
    return value.replace("<video>", frames, 1)
