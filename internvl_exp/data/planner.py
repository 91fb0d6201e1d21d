"""The pre-flight check of one annotation line: parse, validate, measure, apply the length policy.

`Planner.plan` turns a raw jsonl line into a `PlannedSample` (everything needed to load it later: media
paths, tiles per image, frames per video, token length), or into a skip reason from `REASONS` with a
detail message. It never reads pixels beyond image headers and video metadata.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from internvl_exp.data.image_header import SWAPS_SIZE, HeaderCache
from internvl_exp.data.images import RESIZE_BACKENDS
from internvl_exp.data.sources import DatasetEntry, RawLine
from internvl_exp.data.templates import IMAGE_PLACEHOLDER, ConversationError, count_turns, normalise_roles
from internvl_exp.data.tiling import choose_grid
from internvl_exp.data.video import FRAME_SAMPLING, VideoError, VideoInfo, expand_video_placeholder, probe_video, video_kind

VIDEO_PLACEHOLDER = "<video>"
# A JSON escape of a UTF-16 surrogate: json.loads accepts a lone one ("\ud800") and returns a str that no
# tokenizer (nor UTF-8) can take, so lines holding such an escape are checked string by string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

# Every reason a line can be skipped, with what it means (used in reports and docs/data.md).
REASONS: dict[str, str] = {
    "invalid_json": "the line is not valid JSON, not a JSON object, or not valid text (bad UTF-8, or a lone "
    "UTF-16 surrogate escape such as \"\\ud800\")",
    "bad_conversation": "'conversations' missing or malformed: unknown role, roles not alternating human/gpt, "
    "or not ending with a gpt answer",
    "bad_media_field": "'image'/'video'/'clip' has the wrong type, or a line has both 'image' and 'video'",
    "image_count_mismatch": "the number of <image> (or <video>) placeholders differs from the media given",
    "missing_media": "an image, video or frame folder does not exist",
    "corrupt_media": "an image cannot be opened or decoded",
    "video_unreadable": "a video cannot be opened or decoded, or has no frames (in its clip)",
    "too_long": "longer than data.max_seq_length (length_policy=drop, or still too long after truncation)",
}
# Reasons that are a policy decision rather than bad data: never fatal under on_error=strict.
POLICY_REASONS = frozenset({"too_long"})


class Skip(Exception):
    """Why a line cannot become a sample: a key of REASONS and a human-readable detail."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageSettings:
    """How media becomes tiles: the model's tile size and limits plus the data config's video settings."""

    tile_size: int
    tokens_per_tile: int
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    use_thumbnail: bool = True
    normalize_type: str = "imagenet"
    min_num_frame: int = 8
    max_num_frame: int = 32
    frame_sampling: str = "rand"
    resize_backend: str = "pil"
    # Apply an image's EXIF orientation before tiling (off: pixels as stored, as InternVL's loader reads them).
    exif_transpose: bool = False

    def __post_init__(self) -> None:
        if self.resize_backend not in RESIZE_BACKENDS:
            raise ValueError(f"data.resize_backend must be one of {list(RESIZE_BACKENDS)}, got {self.resize_backend!r}")
        if not 1 <= self.min_num_frame <= self.max_num_frame:
            raise ValueError(
                f"data.min_num_frame/max_num_frame: need 1 <= min_num_frame <= max_num_frame, "
                f"got {self.min_num_frame}, {self.max_num_frame}"
            )
        if self.frame_sampling not in FRAME_SAMPLING:
            raise ValueError(f"data.frame_sampling must be one of {list(FRAME_SAMPLING)}, got {self.frame_sampling!r}")


@dataclass(frozen=True)
class VideoRef:
    path: Path
    raw: str  # the path as written (a trailing "/" marks a frame folder)
    info: VideoInfo


@dataclass(slots=True)
class PlannedSample:
    entry: DatasetEntry
    line: RawLine
    conversations: list[dict]  # `<video>` already expanded to one `<image>` per frame
    images: list[Path]
    video: VideoRef | None
    max_tiles_per_image: int
    num_tiles: list[int]  # per `<image>` (a video frame is one tile)
    length: int
    supervised_tokens: int
    truncated: bool = False
    rotated: int = 0  # images of the line whose EXIF orientation tag asks for a rotation or mirror (2-8)

    @property
    def num_frames(self) -> int:
        return len(self.num_tiles) if self.video is not None else 0


@lru_cache(maxsize=4096)  # images come in few sizes: the grid search runs once per (size, budget)
def _num_tiles(width: int, height: int, min_tiles: int, max_tiles: int, s: ImageSettings) -> int:
    cols, rows = choose_grid(width, height, min(min_tiles, max_tiles), max_tiles, s.tile_size)
    n = cols * rows
    return n + 1 if (s.use_thumbnail and n > 1) else n


def _media_fields(sample: dict) -> tuple[list[str], str | None, list[float] | None]:
    image, video, clip = sample.get("image"), sample.get("video"), sample.get("clip")
    if image and video:
        raise Skip("bad_media_field", "a line may have 'image' or 'video', not both")
    images: list[str] = []
    if image:
        images = [image] if isinstance(image, str) else image
        if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
            raise Skip("bad_media_field", f"'image' must be a path or a list of paths, got {image!r}")
    if video is not None and video != "" and not isinstance(video, str):
        raise Skip("bad_media_field", f"'video' must be a path, got {video!r}")
    if clip is not None:
        ok = (
            isinstance(clip, list)
            and len(clip) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in clip)
            and 0 <= clip[0] < clip[1]
        )
        if not ok:
            raise Skip("bad_media_field", f"'clip' must be [start, end] in seconds with 0 <= start < end, got {clip!r}")
    return images, (video or None), clip


def _lone_surrogate(value: object, where: str = "") -> str | None:
    """Where in the parsed line a string holds an unpaired surrogate (e.g. "conversations[1].value"), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "the line"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            at = f"{where}.{key}" if where else str(key)
            found = _lone_surrogate(key, f"a key of {where or 'the line'}") or _lone_surrogate(item, at)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def _first_human(convs: list[dict]) -> int:
    return 1 if convs[0]["from"] == "system" else 0


class Planner:
    """Turns raw lines into planned samples, or a reason why not."""

    def __init__(self, tokenizer: Any, template: str, settings: ImageSettings, max_seq_length: int,
                 length_policy: str, system_message: str | None = None, seed: int = 0):
        if length_policy not in ("drop", "truncate"):
            raise ValueError(f"data.length_policy must be 'drop' or 'truncate', got {length_policy!r}")
        self.tokenizer = tokenizer
        self.template = template
        self.settings = settings
        self.max_seq_length = max_seq_length
        self.length_policy = length_policy
        self.system_message = system_message
        self.seed = seed
        self._headers = HeaderCache()
        self._paths: dict[tuple[str, str], Path] = {}

    def plan(self, entry: DatasetEntry, line: RawLine) -> tuple[PlannedSample | None, str | None, str | None]:
        """(sample, skip_reason, detail). A truncated sample comes back with detail == 'truncated'."""
        try:
            sample = self._plan(entry, line)
        except Skip as e:
            return None, e.reason, e.detail
        return sample, None, ("truncated" if sample.truncated else None)

    def _parse(self, line: RawLine) -> tuple[list[dict], list[str], str | None, list[float] | None]:
        """The line's conversation (canonical roles) and media fields, or Skip."""
        try:
            sample = json.loads(line.text)
        except json.JSONDecodeError as e:
            raise Skip("invalid_json", f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(sample, dict):
            raise Skip("invalid_json", "a line must be a JSON object")
        if _SURROGATE_ESCAPE.search(line.text):
            bad = _lone_surrogate(sample)
            if bad is not None:
                raise Skip("invalid_json", f"{bad} holds a lone UTF-16 surrogate (an escape like \"\\ud800\" without its "
                           "pair): not valid Unicode text; fix or remove the escape")
        try:
            turns = normalise_roles(sample.get("conversations"))
        except ConversationError as e:
            raise Skip("bad_conversation", str(e)) from None
        convs = [{"from": role, "value": value} for role, value in turns]  # canonical roles: system/human/gpt
        media, video_raw, clip = _media_fields(sample)
        return convs, media, video_raw, clip

    def _plan(self, entry: DatasetEntry, line: RawLine) -> PlannedSample:
        convs, media, video_raw, clip = self._parse(line)
        s = self.settings
        video = None
        rotated = 0
        if video_raw is not None:
            video, tiles = self._plan_video(entry, line, convs, video_raw, clip)
            paths: list[Path] = []
            per_image = 1
        else:
            paths, per_image, tiles, rotated = self._plan_images(entry, convs, media)
        # The roles were checked by _parse: count_turns need not check them again.
        blocks = count_turns(convs, self.tokenizer, self.template, [n * s.tokens_per_tile for n in tiles],
                             self.system_message, roles_checked=True)
        length = sum(b["length"] for b in blocks)
        truncated = False
        if length > self.max_seq_length:
            if self.length_policy == "drop":
                raise Skip("too_long", f"{length} tokens > max_seq_length {self.max_seq_length}")
            blocks, convs = self._truncate(blocks, convs, length)
            length = sum(b["length"] for b in blocks)
            n_images = sum(b["num_images"] for b in blocks)
            paths, tiles = paths[:n_images], tiles[:n_images]
            if video is not None and n_images == 0:
                video = None
            truncated = True
        supervised = sum(b["supervised"] for b in blocks)
        return PlannedSample(entry, line, convs, paths, video, per_image, tiles, length, supervised, truncated, rotated)

    def materialize(self, entry: DatasetEntry, line: RawLine, *, per_image: int, tiles: list[int], n_frames: int,
                    video_first: int, video_count: int, turns: int, length: int, supervised: int,
                    truncated: bool) -> PlannedSample:
        """The PlannedSample of a line planned before (its numbers from the plan arrays): the text is parsed
        again, media are not probed again (a change since the scan shows when the sample loads)."""
        convs, media, video_raw, clip = self._parse(line)
        video = None
        if video_raw is not None:
            n_video = self._video_placeholders(convs)
            self._expand_video(convs, n_video, n_frames)
            path = entry.root / video_raw
            video = VideoRef(path, video_raw, VideoInfo(video_kind(path, video_raw), video_first, video_count))
            paths: list[Path] = []
        else:
            self._image_placeholders(convs, media)
            paths = [entry.root / m for m in media]
        if truncated:
            convs = convs[:turns]
            paths = paths[: len(tiles)]
            if video is not None and not tiles:
                video = None
        return PlannedSample(entry, line, convs, paths, video, per_image, list(tiles), length, supervised, truncated)

    def _image_placeholders(self, convs: list[dict], media: list[str]) -> None:
        n_ph = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in convs)
        if any(VIDEO_PLACEHOLDER in t["value"] for t in convs):
            raise Skip("image_count_mismatch", "a <video> placeholder but no 'video' in the line")
        if media and n_ph == 0:
            # InternVL prepends the placeholder(s) to the first human turn when they are missing.
            first = _first_human(convs)
            convs[first]["value"] = (IMAGE_PLACEHOLDER + "\n") * len(media) + convs[first]["value"]
            n_ph = len(media)
        if n_ph != len(media):
            raise Skip("image_count_mismatch", f"{n_ph} <image> placeholder(s) but {len(media)} image(s)")

    def _plan_images(self, entry: DatasetEntry, convs: list[dict],
                     media: list[str]) -> tuple[list[Path], int, list[int], int]:
        """(paths, tile budget per image, tiles per image, images with an EXIF rotation tag)."""
        self._image_placeholders(convs, media)
        paths = [self._path(entry, m) for m in media]
        sizes = []
        rotated = 0
        for p in paths:
            try:
                (w, h), orientation = self._headers.info(p)
            except FileNotFoundError:
                raise Skip("missing_media", f"image {p} does not exist (or is not a file)") from None
            except IsADirectoryError:
                raise Skip("missing_media", f"image {p} does not exist (or is not a file)") from None
            except (OSError, Image.DecompressionBombError) as e:
                raise Skip("corrupt_media", f"cannot read image {p}: {e}") from None
            rotated += orientation != 1
            # Transposed on load (data.exif_transpose): the tiles are those of the turned image.
            sizes.append((h, w) if self.settings.exif_transpose and orientation in SWAPS_SIZE else (w, h))
        s = self.settings
        budget = entry.max_dynamic_patch or s.max_dynamic_patch
        # InternVL's multi-image split: each image gets an equal share of the dataset's tile budget.
        per_image = max(1, budget // len(media)) if media else budget
        tiles = [_num_tiles(w, h, s.min_dynamic_patch, per_image, s) for w, h in sizes]
        return paths, per_image, tiles, rotated

    def _path(self, entry: DatasetEntry, media: str) -> Path:
        """entry.root / media, remembered: mixes name the same images again and again (a Path costs ~5 us)."""
        key = (entry.name, media)
        path = self._paths.get(key)
        if path is None:
            if len(self._paths) >= 100_000:
                self._paths.clear()
            path = self._paths[key] = entry.root / media
        return path

    @staticmethod
    def _video_placeholders(convs: list[dict]) -> int:
        n_video = sum(t["value"].count(VIDEO_PLACEHOLDER) for t in convs)
        n_image = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in convs)
        if n_image or n_video > 1:
            raise Skip(
                "image_count_mismatch",
                f"a video line needs one <video> placeholder (or none) and no <image>; found {n_video} <video>, {n_image} <image>",
            )
        return n_video

    @staticmethod
    def _expand_video(convs: list[dict], n_video: int, n: int) -> None:
        if n_video == 0:
            first = _first_human(convs)
            convs[first]["value"] = VIDEO_PLACEHOLDER + "\n" + convs[first]["value"]
        for t in convs:
            if VIDEO_PLACEHOLDER in t["value"]:
                t["value"] = expand_video_placeholder(t["value"], n)

    def _plan_video(self, entry: DatasetEntry, line: RawLine, convs: list[dict], raw: str,
                    clip: list[float] | None) -> tuple[VideoRef, list[int]]:
        n_video = self._video_placeholders(convs)
        path = entry.root / raw
        if not path.exists():
            raise Skip("missing_media", f"video {path} does not exist")
        try:
            info = probe_video(path, raw, clip)
        except VideoError as e:
            raise Skip("video_unreadable", str(e)) from None
        if info.count == 0:
            where = f" in clip {clip}" if clip is not None and info.kind != "folder" else ""
            raise Skip("video_unreadable", f"video {path} has no frames{where}")
        s = self.settings
        # The frame count decides the token length, so it is drawn here (seeded per line); which frames
        # are taken is drawn at load time.
        rng = random.Random(f"{self.seed}-{entry.name}-{line.line_no}-frames")
        n = min(rng.randint(s.min_num_frame, s.max_num_frame), info.count)
        self._expand_video(convs, n_video, n)
        return VideoRef(path, raw, info), [1] * n

    def _truncate(self, blocks: list[dict], convs: list[dict], length: int) -> tuple[list[dict], list[dict]]:
        """Cut whole trailing (human, gpt) pairs; keep the system block and at least one pair."""
        keep = len(blocks)
        while keep > 3 and sum(b["length"] for b in blocks[:keep]) > self.max_seq_length:
            keep -= 2
        kept = sum(b["length"] for b in blocks[:keep])
        if kept > self.max_seq_length:
            raise Skip(
                "too_long",
                f"{length} tokens > max_seq_length {self.max_seq_length}, and {kept} even with only the first turn pair",
            )
        system_turn = _first_human(convs)
        return blocks[:keep], convs[: system_turn + keep - 1]
