"""Image sizes (and EXIF orientation) from the file header alone, for the pre-flight scan: JPEG and PNG parsed
directly (a few reads of the first bytes, ~20x cheaper than opening the file with PIL), anything else (or
anything these parsers do not recognise) through PIL, which then also gives the error for a broken file.

The orientation is the EXIF tag 0x0112 of the first IFD, as PIL's `getexif()` reads it (1 = as stored; 2-8 a
mirror and/or rotation a viewer applies): in a JPEG's APP1 "Exif" segment, which comes before the frame header,
and in a PNG's eXIf chunk, which comes before the image data."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from PIL import Image

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_NO_LENGTH = {0xD8, 0x01} | set(range(0xD0, 0xD8))
ORIENTATION_TAG = 0x0112
# Orientations that swap width and height (transposed, or rotated by 90/270 degrees).
SWAPS_SIZE = frozenset({5, 6, 7, 8})


def exif_orientation(tiff: bytes) -> int:
    """The orientation tag of an EXIF block (TIFF layout: byte order, IFD0 offset, 12-byte entries); 1 when it
    is absent, out of range or the block is malformed (PIL then ignores it as well)."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for k in range(count):
        at = ifd + 2 + 12 * k
        if at + 10 > len(tiff):
            break
        tag, kind = struct.unpack(order + "HH", tiff[at : at + 4])
        if tag == ORIENTATION_TAG:
            if kind != 3:  # SHORT, as the standard says; anything else PIL would not act on either
                return 1
            (value,) = struct.unpack(order + "H", tiff[at + 8 : at + 10])
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_size(f, head: bytes) -> tuple[tuple[int, int], int] | None:
    """Walk the JPEG markers to the first frame header (SOFn), reading the orientation of an APP1 Exif segment
    met on the way; ((width, height), orientation), or None when the layout is not the expected one."""
    base, data, pos = 0, head, 2  # `pos` is relative to `base`, the file offset of data[0]
    orientation = 1
    while True:
        if pos + 9 > len(data):  # refill from the current marker on
            f.seek(base + pos)
            base, data, pos = base + pos, f.read(4096), 0
            if len(data) < 4:
                return None
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        if marker in _SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return ((width, height), orientation) if width and height else None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker == 0xD9 or length < 2:  # the end of the image before any frame header
            return None
        if marker == 0xE1 and orientation == 1 and length > 8:  # APP1: Exif (or XMP, which starts otherwise)
            f.seek(base + pos + 4)
            segment = f.read(length - 2)
            if segment[:6] == b"Exif\0\0":
                orientation = exif_orientation(segment[6:])
        pos += 2 + length


def _png_orientation(f, head: bytes) -> int:
    """The orientation in a PNG's eXIf chunk, looked for among the chunks before the first IDAT. The chunks
    usually sit inside the first bytes already read (`head`): no extra read then."""

    def read(at: int, n: int) -> bytes:
        if at + n <= len(head):
            return head[at : at + n]
        f.seek(at)
        return f.read(n)

    pos = 8
    while True:
        header = read(pos, 8)
        if len(header) < 8:
            return 1
        length, kind = struct.unpack(">I4s", header)
        if kind in (b"IDAT", b"IEND"):
            return 1
        if kind == b"eXIf":
            data = read(pos + 8, length)
            return exif_orientation(data[6:] if data[:6] == b"Exif\0\0" else data)
        pos += 12 + length  # length, type, data, CRC


def header_info(path: Path) -> tuple[tuple[int, int], int]:
    """((width, height) as stored, EXIF orientation 1-8) of the image at `path`. Raises OSError
    (FileNotFoundError, ...) or PIL's errors."""
    with open(path, "rb") as f:
        head = f.read(512)
        found = None
        if head[:3] == b"\xff\xd8\xff":
            found = _jpeg_size(f, head)
        elif head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            found = ((width, height), _png_orientation(f, head)) if width and height else None
    if found is not None and found[0][0] * found[0][1] <= Image.MAX_IMAGE_PIXELS:
        return found
    with Image.open(path) as im:  # other formats, unusual headers, and PIL's own decompression-bomb check
        orientation = im.getexif().get(ORIENTATION_TAG, 1)
        return im.size, orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image at `path`. Raises OSError (FileNotFoundError, ...) or PIL's errors."""
    return header_info(path)[0]


class HeaderCache:
    """`header_info` per process, remembered by (path, size, mtime_ns): mixes reuse images, and a stat is
    ~20x cheaper than opening the file. A file rewritten in place gets a new mtime (or size), so it is read
    again; only headers are kept, never errors (a missing or broken file is re-checked each time it is met)."""

    def __init__(self, max_entries: int = 200_000):
        self._infos: dict[str, tuple[int, int, tuple[tuple[int, int], int]]] = {}
        self._max = max_entries

    def info(self, path: str | os.PathLike) -> tuple[tuple[int, int], int]:
        """((width, height), EXIF orientation) of the image at `path`."""
        key = os.fspath(path)
        st = os.stat(key)  # FileNotFoundError as header_info would raise it
        hit = self._infos.get(key)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        if not stat.S_ISREG(st.st_mode):
            return header_info(Path(key))  # raises IsADirectoryError & co. as before
        info = header_info(Path(key))
        if len(self._infos) >= self._max:
            self._infos.clear()
        self._infos[key] = (st.st_size, st.st_mtime_ns, info)
        return info

    def size(self, path: str | os.PathLike) -> tuple[int, int]:
        return self.info(path)[0]
