"""One image file checked before anything decodes it: whole, of a sane size, and its size and
channels read from its header (which choose the run's resolution)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, NamedTuple

from PIL import Image

from autofit.data.decoder import quiet_pil
from autofit.errors import DataError, one_line
from autofit.files import printable

HEAD_BYTES = 26  # through a PNG's IHDR colour type


TAIL_BYTES = 1024


MAX_PIXELS = 1 << 26  # 8192 x 8192; one RGB image decodes to 192 MiB, and DALI decodes several


JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                         0xCF})


JPEG_MAX_SEGMENTS = 1024


MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"P2", b"P3",
         b"P5", b"P6")


GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


class ImageInfo(NamedTuple):
    """An image's size and channel count as its header gives them (None: not known)."""

    width: int
    height: int
    channels: int | None


def check_image_file(path: str | Path) -> ImageInfo | None:
    """Refuse what is not a whole image of a sane size by its first and last bytes and its
    header: an empty file, a text file named .jpg, a JPEG or PNG cut short, a decompression
    bomb. DALI 2.4's CPU decoder can crash the process (SIGSEGV) on such files instead of
    raising, and decodes a bomb in full, so they must not reach it. Returns the header's size
    and channels, which choose the run's resolution (None when only a decode can tell)."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        raise DataError(f"{printable(path)}: the name is not valid UTF-8, which DALI cannot open; "
                        "rename it") from None
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - TAIL_BYTES))
            tail = handle.read()
            _check_ends(path, head, tail)
            found = _png_size(head) or (_jpeg_size(handle) if head[:2] == b"\xff\xd8" else None)
    except OSError as err:
        raise DataError(f"cannot read {printable(path)}: {err.strerror or err}") from None
    found = found or _pil_size(path)
    if found is None:
        return None
    width, height = found.width, found.height
    if width < 1 or height < 1:
        raise DataError(f"{printable(path)} has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise DataError(f"{printable(path)} is {width}x{height}, over the limit of {MAX_PIXELS:,} "
                        "pixels per image")
    return found


def _check_ends(path: Path, head: bytes, tail: bytes) -> None:
    if not head:
        raise DataError(f"{printable(path)} is empty (0 bytes)")
    if not (head.startswith(MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        raise DataError(f"{printable(path)} is not a JPEG, PNG, BMP, PPM/PGM, TIFF or WebP image")
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail:
        raise DataError(f"{printable(path)} is a truncated JPEG (no end-of-image marker)")
    if head.startswith(b"\x89PNG") and b"IEND" not in tail:
        raise DataError(f"{printable(path)} is a truncated PNG (no IEND chunk)")


def _png_size(head: bytes) -> ImageInfo | None:
    """Size and channels from the IHDR chunk, which a PNG must start with (colour types 0
    and 4 are greyscale, with or without alpha)."""
    if not (head.startswith(b"\x89PNG") and head[12:16] == b"IHDR" and len(head) >= 26):
        return None
    return ImageInfo(int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"),
                     1 if head[25] in (0, 4) else 3)


def _jpeg_size(handle: BinaryIO) -> ImageInfo | None:
    """Size and channels from the start-of-frame segment, walking the (EXIF, table) segments
    before it; a few reads, where PIL parses every table. None when the walk does not find it."""
    start = 2
    for _ in range(JPEG_MAX_SEGMENTS):
        handle.seek(start)
        segment = handle.read(10)  # marker, length, a frame's precision, height, width, planes
        if len(segment) < 4 or segment[0] != 0xFF:
            return None
        if segment[1] == 0xFF:  # a fill byte before the marker
            start += 1
            continue
        length = int.from_bytes(segment[2:4], "big")
        if segment[1] in JPEG_FRAMES and len(segment) == 10:
            return ImageInfo(int.from_bytes(segment[7:9], "big"),
                             int.from_bytes(segment[5:7], "big"), 1 if segment[9] == 1 else 3)
        if segment[1] == 0xDA or length < 2:
            return None
        start += 2 + length
    return None


def _pil_size(path: Path) -> ImageInfo | None:
    """Size and channels as PIL reads them from the header (it decodes no pixels). None when
    PIL cannot read it: the decoder, in its child process, judges that file, and the error
    then names it with the decoder's (or PIL's) reason."""
    try:
        with quiet_pil(), Image.open(path) as img:
            return ImageInfo(img.width, img.height, 1 if img.mode in GREY_MODES else 3)
    except Image.DecompressionBombError as err:
        raise DataError(f"{printable(path)} is too large to decode: {one_line(err)}") from None
    except Exception:  # noqa: BLE001 - PIL raises many types on a malformed header
        return None
