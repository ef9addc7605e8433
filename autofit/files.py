"""Files as autofit handles them everywhere: atomic writes (a reader, or a resume after a kill
or power loss, sees the old file or the new one, never a torn one), paths shown as one line,
and the image files a list of paths and folders names. Standard library only: the client
and the records use it without numpy, torch or Ray."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff",
                            ".webp"})


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write, fsync, rename, fsync the directory: a reader (or a resume after power loss)
    sees the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb" if isinstance(text, bytes) else "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)




def printable(path: object) -> str:
    """A path as one line of text: control characters (a newline in a file name) and bytes
    that are not UTF-8 are escaped; spaces and non-ASCII letters are kept as they are."""
    text = str(path)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{ord(char) - 0xDC00:02x}"
    return ascii(char)[1:-1]


def image_files(items: Sequence[str | Path]) -> list[Path]:
    """Image files as given, folders replaced by the image files in them (sorted); ValueError
    names a path that does not exist, or says there is no image."""
    found: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise ValueError(f"{printable(item)} does not exist")
    if not found:
        raise ValueError(f"no image files in {', '.join(map(printable, items))}")
    return found
