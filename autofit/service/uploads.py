"""A dataset upload for `autofit serve`: streamed to disk as it arrives (an oversized one stops
at the chunk that passes the limit), unpacked member by member (one that could write outside
the dataset folder is refused before anything is written for it; decompressed bytes are counted
as written, so a zip bomb stops at the limit), and checked by the rules `--data` applies."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import anyio
import anyio.to_thread
from pydantic import BaseModel
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from autofit.errors import AutofitError, one_line
from autofit.files import printable

KINDS = {".zip": "zip", ".tar.gz": "tar", ".tgz": "tar", ".npz": "npz"}
ACCEPTED = ".zip, .tar.gz/.tgz or .npz"
CHUNK = 1 << 20  # bytes read from a member at a time
FLUSH = 1 << 20  # file bytes gathered from the body before one write off the event loop
FORM_SLACK = 64 << 10  # multipart framing and the small fields, beyond the file's own bytes
MAX_NAME = 200  # characters in a dataset's name
DATA = "data"  # the folder an archive is unpacked into, inside the dataset folder
NPZ = "data.npz"  # where an uploaded .npz is kept, inside the dataset folder
SKIP = "__MACOSX"  # the resource forks Finder adds to a zip: not data, never written
ODD: dict[bytes | int, str] = {  # members that are neither files nor folders: tar types, zip modes
    tarfile.SYMTYPE: "is a symbolic link", tarfile.LNKTYPE: "is a hard link",
    tarfile.CHRTYPE: "is a device file", tarfile.BLKTYPE: "is a device file",
    tarfile.FIFOTYPE: "is a fifo", stat.S_IFLNK: "is a symbolic link", stat.S_IFIFO: "is a fifo",
    stat.S_IFCHR: "is a device file", stat.S_IFBLK: "is a device file"}
OTHER = "is not a regular file or folder"
UNREADABLE = (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError,
              NotImplementedError)  # what reading a corrupt or unsupported archive raises


class Limits(BaseModel):
    """What one upload may cost the server: bytes received, bytes unpacked, archive members."""

    upload_bytes: int = 2 * 2**30
    extracted_bytes: int = 8 * 2**30
    members: int = 500_000


class UploadError(Exception):
    """An upload refused: the HTTP status (400 or 413) and one line that names no server path."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Ingested(BaseModel):
    """A checked dataset: what `POST /v1/datasets` records and answers."""

    data: str
    format: Literal["folder", "csv", "npz"]
    name: str
    classes: list[str]
    images: int
    test_images: int | None
    bytes: int
    skipped: list[str] = []


def _too_large(limits: Limits) -> UploadError:
    return UploadError(413, f"the upload is over the limit of {limits.upload_bytes:,} bytes")


def _too_many(limits: Limits, shown: str) -> UploadError:
    return UploadError(400, f"{shown} holds more than {limits.members:,} members")


def _reason(err: BaseException) -> str:
    """An error's reason without the file name an OSError's text carries (a server path)."""
    return err.strerror if isinstance(err, OSError) and err.strerror else one_line(err)


class Upload:
    """The uploaded file (`path`, `kind` in KINDS) and the push-parser callbacks that fill it:
    its bytes are counted as they arrive and queued for `flush` to write off the event loop."""

    def __init__(self, folder: Path, limits: Limits) -> None:
        self.folder, self.limits = folder, limits
        self.path = folder  # the stored file's, once the `file` part starts (`kind` is set)
        self.out: BinaryIO | None = None
        self.filename = self.kind = self.suffix = self.name = ""
        self.field = bytearray()  # the `name` field as it arrives
        self.size = self.queued = 0
        self.pending: list[bytes] = []
        self.ended = False
        self._part: str | None = None
        self._head = (bytearray(), bytearray())  # the header being read: field, value
        self._disposition = b""

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_header_field": lambda data, start, end: self._head[0].extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._head[1].extend(data[start:end]),
                "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
                "on_part_data": self._data, "on_end": lambda: setattr(self, "ended", True)}

    def _header_end(self) -> None:
        if self._head[0].lower() == b"content-disposition":
            self._disposition = bytes(self._head[1])
        for buf in self._head:
            buf.clear()

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._part, self._disposition = None, b""
        field = options.get(b"name", b"").decode("utf-8", "replace")
        if field == "name" and b"filename" not in options:
            self._part = "name"
        elif field == "file" and b"filename" in options:
            if self.kind:
                raise UploadError(400, "the upload has more than one 'file' part")
            raw = options[b"filename"].decode("utf-8", "replace")
            self.filename = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()
            suffix = next((s for s in KINDS if self.filename.lower().endswith(s)), "")
            if not suffix or len(self.filename) == len(suffix):
                raise UploadError(400, f"the file must be a {ACCEPTED} "
                                       f"(got {printable(self.filename) or 'no file name'!r})")
            self.kind, self.suffix = KINDS[suffix], suffix
            stored = NPZ if self.kind == "npz" else f"upload{suffix}"
            self.path, self._part = self.folder / stored, "file"

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self.size += end - start
            if self.size > self.limits.upload_bytes:
                raise _too_large(self.limits)
            self.pending.append(data[start:end])
            self.queued += end - start
        elif self._part == "name":
            self.field += data[start:end]  # bounded by FORM_SLACK

    async def flush(self) -> None:
        """Write the queued bytes in a worker thread, creating the file on the first call."""
        if self.out is None:
            self.out = await anyio.to_thread.run_sync(open, self.path, "xb")
        data, self.pending, self.queued = b"".join(self.pending), [], 0
        await anyio.to_thread.run_sync(self.out.write, data)


async def receive(request: Request, folder: Path, limits: Limits) -> Upload:
    """Stream the body's `file` part into `folder` as it arrives (Starlette's form() would
    spool the whole file first), refusing it at the chunk that passes the limit."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not options.get(b"boundary"):
        raise UploadError(400, "expected a multipart/form-data body with a 'file' field")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limits.upload_bytes + FORM_SLACK:
        raise _too_large(limits)  # refused before a byte is read
    form, body = Upload(folder, limits), 0
    parser = MultipartParser(options[b"boundary"], form.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            body += len(chunk)
            if body > limits.upload_bytes + FORM_SLACK:  # fields or framing, not the file
                raise _too_large(limits)
            parser.write(chunk)
            if form.queued >= FLUSH:
                await form.flush()
        parser.finalize()
        if not form.kind:
            raise UploadError(400, "the upload has no 'file' field (multipart, with a file name)")
        if not form.ended:
            raise UploadError(400, "the upload ends before its closing multipart boundary")
        await form.flush()
    except ClientDisconnect:
        raise UploadError(400, "the client went away before the upload ended") from None
    except MultipartParseError as err:
        raise UploadError(400, f"the multipart body is malformed ({one_line(err)})") from None
    finally:
        if form.out is not None:
            form.out.close()
    form.name = " ".join(form.field.decode("utf-8", "replace").split())
    if len(form.name) > MAX_NAME:
        raise UploadError(400, f"the name is longer than {MAX_NAME} characters")
    form.name = form.name or form.filename[: -len(form.suffix)]
    return form


class _Overflow(Exception):
    """More decompressed bytes than the room left."""


def _copy(src: BinaryIO, dst: BinaryIO | None, room: int) -> int:
    """Copy (with no `dst`, read) `src` in chunks, counting what it holds (headers can lie), and
    stop before writing the chunk that passes `room`: the bytes on disk never exceed it."""
    total = 0
    while chunk := src.read(CHUNK):
        total += len(chunk)
        if total > room:
            raise _Overflow
        if dst is not None:
            dst.write(chunk)
    return total


class _Writer:
    """Writes members under `root`, checking each name, counting members and bytes."""

    def __init__(self, root: Path, limits: Limits, shown: str) -> None:
        self.root, self.limits, self.shown = root, limits, shown
        self.members = self.written = 0

    def refuse(self, name: str, why: str) -> UploadError:
        return UploadError(400, f"{self.shown}: member '{printable(name)}' {why}; refused")

    def target(self, name: str) -> Path | None:
        """Where a member goes; None for the root itself and for Finder's __MACOSX folder."""
        self.members += 1
        if self.members > self.limits.members:
            raise _too_many(self.limits, self.shown)
        if name.startswith("/"):
            raise self.refuse(name, "has an absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(name, "has a '..' component")
        if not parts or parts[0] == SKIP:
            return None
        path = self.root.joinpath(*parts)
        if not path.resolve().is_relative_to(self.root):
            raise self.refuse(name, "would land outside the dataset folder")
        return path

    def write(self, name: str, src: Callable[[], BinaryIO] | None) -> None:
        """A folder (no `src`) or a file, its bytes read from `src()` and counted."""
        if (path := self.target(name)) is None:
            return
        try:
            (path if src is None else path.parent).mkdir(parents=True, exist_ok=True)
            if src is not None:
                with src() as data, open(path, "xb") as out:
                    self.written += _copy(data, out, self.limits.extracted_bytes - self.written)
        except FileExistsError:
            raise self.refuse(name, "appears twice or clashes with a folder") from None
        except UNREADABLE as err:
            raise self.refuse(name, f"cannot be unpacked ({_reason(err)})") from None


def _zip_entries(archive: Path, limits: Limits, shown: str) -> None:
    """Count the central directory's entries before zipfile builds an object for each: a
    small archive can list millions of empty members."""
    z: Any = zipfile  # its private end-record reader, as ZipFile uses it
    with archive.open("rb") as f:
        end = z._EndRecData(f)
        if not end:
            return  # not a zip: ZipFile says so
        start = end[z._ECD_LOCATION] - end[z._ECD_SIZE]
        if end[z._ECD_SIGNATURE] == z.stringEndArchive64:
            start -= z.sizeEndCentDir64 + z.sizeEndCentDir64Locator
        f.seek(max(start, 0))
        for _ in range(limits.members + 1):
            head = f.read(46)
            if len(head) < 46 or head[:4] != b"PK\x01\x02":
                return
            f.seek(sum(struct.unpack("<3H", head[28:34])), 1)  # name, extra, comment
    raise _too_many(limits, shown)


def _unzip(archive: Path, writer: _Writer) -> None:
    _zip_entries(archive, writer.limits, writer.shown)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = info.filename.replace("\\", "/")  # Windows tools write backslashes
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise writer.refuse(name, ODD.get(kind, OTHER))
            if info.flag_bits & 0x1:
                raise writer.refuse(name, "is encrypted")
            folder = name.endswith("/") or kind == stat.S_IFDIR
            writer.write(name, None if folder else lambda info=info: zf.open(info))


def _untar(archive: Path, writer: _Writer) -> None:
    with tarfile.open(archive, "r|*") as tar:  # a stream: gzip is read once, front to back
        while (member := tar.next()) is not None:
            tar.members.clear()  # a stream never looks back; keeps memory flat
            if not (member.isdir() or member.isfile()):
                raise writer.refuse(member.name, ODD.get(member.type, OTHER))
            src = (lambda m=member: tar.extractfile(m)) if member.isfile() else None
            writer.write(member.name, src)  # type: ignore[arg-type]


def unpack(got: Upload, folder: Path, limits: Limits) -> Path:
    """Extract an archive into `folder/data` member by member (extractall trusts names and
    sizes), delete it, return what `--data` gets; a .npz is read through before numpy loads it."""
    shown, root = printable(got.filename), folder / DATA
    writer = _Writer(root, limits, shown)
    try:
        if got.kind == "npz":
            _zip_entries(got.path, limits, shown)
            with zipfile.ZipFile(got.path) as zf:
                for info in zf.infolist():
                    with zf.open(info) as src:
                        writer.written += _copy(src, None, limits.extracted_bytes - writer.written)
            return got.path
        root.mkdir()
        (_unzip if got.kind == "zip" else _untar)(got.path, writer)
    except _Overflow:
        raise UploadError(400, f"{shown} expands past {limits.extracted_bytes:,} bytes; "
                               "refused while unpacking") from None
    except UNREADABLE as err:
        raise UploadError(400, f"{shown} is not a readable {got.suffix} file "
                               f"({_reason(err)})") from None
    got.path.unlink()
    return _data_root(root)


def _data_root(top: Path) -> Path:
    """The folder (or label CSV) inside the unpacked tree, through the one top-level folder an
    archive often holds."""
    here = top
    while not ((here / "train.csv").is_file() or (here / "train").is_dir()):
        entries = [e for e in sorted(here.iterdir()) if not e.name.startswith(".")]
        csvs = [e for e in entries if e.is_file() and e.suffix.lower() == ".csv"]
        if len(csvs) == 1:
            return csvs[0]
        if len(entries) != 1 or not entries[0].is_dir():
            break
        here = entries[0]
    return here


def check(data: Path, kind: str) -> tuple[list[str], int, int | None, list[str]]:
    """Classes, images, test images (None: the run holds a split out) and skipped images, by
    the rules `--data` applies: discover's header checks and load's share of unreadable images.
    Pixels are not decoded: the run decodes once, and skips what its decoder cannot read."""
    if kind == "npz":
        from autofit.data.sources import load_npz

        try:
            arrays = load_npz(data)
        except MemoryError:
            raise UploadError(400, f"{data.name} declares arrays too large to load") from None
        y_test = arrays.y_test
        return arrays.classes, len(arrays.y_train), None if y_test is None else len(y_test), []
    from autofit.data import discover  # the listing and load's rule for unreadable images

    found = discover.Found()
    classes, train, test, how = discover.discover(data, 0, found)
    total = len(train.files) + len(test.files) + len(found.skipped)
    if len(found.skipped) > discover.unreadable_allowance(total):
        raise discover.too_many_unreadable(found.skipped, total)
    skipped = [reason for _, reason in found.skipped]
    if how.startswith("stratified"):  # no test split of its own: the run holds one out
        return classes, len(train.files) + len(test.files), None, skipped
    return classes, len(train.files), len(test.files), skipped


def _hide(text: str, folder: Path, shown: str) -> str:
    """A message with the server's paths made relative to the archive (or its name)."""
    for base in dict.fromkeys((str(folder), printable(folder))):
        for stored in (NPZ, DATA):  # data.npz first: it starts with data
            text = text.replace(f"{base}/{stored}/", "").replace(f"{base}/{stored}", shown)
        text = text.replace(f"{base}/", "").replace(base, ".")
    return text


def _clear(folder: Path) -> None:
    for entry in folder.iterdir():
        (shutil.rmtree if entry.is_dir() and not entry.is_symlink() else os.remove)(entry)


async def ingest(request: Request, folder: Path, limits: Limits = Limits()) -> Ingested:  # noqa: B008
    """Receive, unpack and check one upload into the empty `folder`; on any failure remove
    what was written there and raise UploadError (other exceptions are bugs: re-raised)."""
    folder, shown = folder.resolve(), "the upload"
    try:
        got = await receive(request, folder, limits)
        shown = printable(got.filename)
        data = await anyio.to_thread.run_sync(unpack, got, folder, limits)
        classes, images, tests, skipped = await anyio.to_thread.run_sync(check, data, got.kind)
    except BaseException as err:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_clear, folder)
        if isinstance(err, UploadError):
            raise UploadError(err.status, _hide(err.message, folder, shown)) from None
        if isinstance(err, AutofitError):
            raise UploadError(400, _hide(one_line(err), folder, shown)) from None
        raise
    csv = data.suffix.lower() == ".csv" or (data / "train.csv").is_file()
    return Ingested(data=str(data.relative_to(folder)),
                    format="npz" if got.kind == "npz" else "csv" if csv else "folder",
                    name=got.name, classes=classes, images=images, test_images=tests,
                    bytes=got.size, skipped=[_hide(line, folder, shown) for line in skipped])
