"""Dataset uploads (autofit.service.uploads) over real HTTP: a uvicorn server on loopback runs a
minimal app that calls `ingest`, and httpx posts real multipart bodies: good archives of each
layout `--data` takes, archives that try to write outside the dataset folder, zip bombs,
oversized uploads (with and without Content-Length) and data that `--data` refuses."""

from __future__ import annotations

import io
import os
import socket
import stat
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autofit.data import dataset
from autofit.data.discover import Found, discover, unreadable_allowance
from autofit.errors import DataError
from autofit.service import uploads
from autofit.service.refusals import DRAIN_BYTES, refusal_headers
from autofit.service.uploads import Limits

CLASSES = ("ant", "bee", "cat", "dog", "elk")
TARGET: dict[str, object] = {}  # the folder and limits the server's next upload gets


async def _upload(request: Request) -> Response:
    folder, limits = TARGET["folder"], TARGET["limits"]
    assert isinstance(folder, Path) and isinstance(limits, Limits)
    try:
        got = await uploads.ingest(request, folder, limits)
    except uploads.UploadError as err:
        headers = refusal_headers(request.headers) if err.status == 413 else None  # as the app
        return JSONResponse({"detail": err.message}, status_code=err.status, headers=headers)
    return JSONResponse(got.model_dump(), status_code=201)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a background thread."""
    app = Starlette(routes=[Route("/upload", _upload, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/upload"
    server.should_exit = True
    thread.join(10)
    sock.close()


@dataclass
class Area:
    """The dataset folder, and a sentinel folder beside it that no upload may touch."""

    root: Path
    folder: Path
    sentinel: Path
    before: dict[str, tuple[int, int, int]]

    def outside(self) -> dict[str, tuple[int, int, int]]:
        """Every path under the test's tmp dir but outside the dataset folder, with its type,
        size and modification time (links not followed)."""
        seen = {}
        for here, dirs, files in os.walk(self.root):
            for name in dirs + files:
                path = Path(here) / name
                if path == self.folder or self.folder in path.parents:
                    continue
                st = path.lstat()
                seen[str(path)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
        return seen

    def refused(self, resp: httpx.Response, status: int, *words: str) -> str:
        """Assert the upload was refused with `status`, nothing stayed in the folder, nothing
        outside it changed, and the message names no server path (an absolute member name is
        the archive's, not the server's); return the message."""
        assert resp.status_code == status, resp.text
        detail = resp.json()["detail"]
        assert "\n" not in detail and str(self.folder) not in detail, detail
        for word in words:
            assert word in detail, detail
        assert list(self.folder.iterdir()) == []
        assert self.outside() == self.before
        return detail


@pytest.fixture
def area(tmp_path: Path) -> Area:
    folder = tmp_path / "datasets" / "ds1"
    folder.mkdir(parents=True)
    sentinel = tmp_path / "datasets" / "sentinel"
    sentinel.mkdir()
    (sentinel / "secret.txt").write_text("keep me")
    TARGET.update(folder=folder, limits=Limits())
    got = Area(tmp_path, folder, sentinel, {})
    got.before = got.outside()
    return got


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def class_tree(prefix: str = "", per_class: int = 6, seed: int = 0) -> dict[str, bytes]:
    return {f"{prefix}{c}/{i}.png": png(seed + 100 * k + i) for k, c in enumerate(CLASSES)
            for i in range(per_class)}


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:  # type: ignore[assignment]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    return buf.getvalue()


def post(url: str, filename: str, data: bytes, **fields: str) -> httpx.Response:
    return httpx.post(url, files={"file": (filename, data)}, data=fields, timeout=60)


def write_tree(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_zip_of_class_folders(url: str, area: Area) -> None:
    body = make_zip(class_tree())
    resp = post(url, "pets.zip", body)
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"data": "data", "format": "folder", "name": "pets",
                           "classes": list(CLASSES), "images": 30, "test_images": None,
                           "bytes": len(body), "skipped": []}
    assert sorted(p.name for p in area.folder.iterdir()) == ["data"]  # the archive is gone
    assert (area.folder / "data" / "elk" / "5.png").read_bytes() == png(405)
    classes, train, test, _ = discover(area.folder / "data", 0)  # what `--data` would see
    assert classes == list(CLASSES) and len(train.files) + len(test.files) == 30
    assert area.outside() == area.before


def test_tar_gz_with_top_folder_and_test_split(url: str, area: Area) -> None:
    members = {**class_tree("mydata/train/"), **class_tree("mydata/test/", 2, seed=7)}
    resp = post(url, "shapes.tar.gz", make_tar(members), name="  My   shapes ")
    assert resp.status_code == 201, resp.text
    got = resp.json()
    assert (got["data"], got["format"], got["name"]) == ("data/mydata", "folder", "My shapes")
    assert (got["classes"], got["images"], got["test_images"]) == (list(CLASSES), 30, 10)
    assert (area.folder / got["data"] / "test" / "ant" / "1.png").is_file()


@pytest.mark.parametrize("layout", ["label csv", "train.csv and test.csv"])
def test_label_csv_archive(url: str, area: Area, layout: str) -> None:
    images = {f"imgs/{i}.png": png(i) for i in range(24)}
    rows = [f"imgs/{i}.png,{CLASSES[i % 3]}" for i in range(24)]
    if layout == "label csv":
        members = {**images, "labels.csv": ("path,label\n" + "\n".join(rows)).encode()}
        data, test_images, images_n = "data/set/labels.csv", None, 24
    else:
        members = {**images, "train.csv": "\n".join(rows[:18]).encode(),
                   "test.csv": "\n".join(rows[18:]).encode()}
        data, test_images, images_n = "data/set", 6, 18
    resp = post(url, "set.tgz", make_tar({f"set/{k}": v for k, v in members.items()}))
    assert resp.status_code == 201, resp.text
    got = resp.json()
    assert (got["data"], got["format"], got["classes"]) == (data, "csv", ["ant", "bee", "cat"])
    assert (got["images"], got["test_images"]) == (images_n, test_images)


def test_npz(url: str, area: Area) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x_train=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
             y_train=np.arange(40) % 4, x_test=np.zeros((12, 8, 8, 3), np.uint8),
             y_test=np.arange(12) % 4)
    resp = post(url, "arrays.npz", buf.getvalue())
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"data": "data.npz", "format": "npz", "name": "arrays",
                           "classes": ["0", "1", "2", "3"], "images": 40, "test_images": 12,
                           "bytes": len(buf.getvalue()), "skipped": []}
    assert (area.folder / "data.npz").read_bytes() == buf.getvalue()


def test_npz_refused_with_the_message_data_gives(url: str, area: Area) -> None:
    buf = io.BytesIO()
    np.savez(buf, x_train=np.zeros((4, 8, 8), np.float32), y_train=np.arange(4))
    detail = area.refused(post(url, "floats.npz", buf.getvalue()), 400)
    assert detail == ("floats.npz: x_train has dtype float32; autofit needs uint8 pixels "
                      "(0-255)")


def _tar_member(name: str, kind: bytes, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


TAR_ATTACKS = {
    "dotdot": ([], {"ok/../../escaped.txt": b"pwned"}, "'..' component"),
    "absolute": ([], {"{sentinel}/abs.txt": b"pwned"}, "absolute path"),
    "symlink": ([_tar_member("link", tarfile.SYMTYPE, linkname="../sentinel")],
                {"link/pwned.txt": b"pwned"}, "is a symbolic link"),
    "hardlink": ([_tar_member("hard", tarfile.LNKTYPE, linkname="{sentinel}/secret.txt")],
                 {}, "is a hard link"),
    "device": ([_tar_member("null", tarfile.CHRTYPE, devmajor=1, devminor=3)], {},
               "is a device file"),
    "fifo": ([_tar_member("pipe", tarfile.FIFOTYPE)], {}, "is a fifo"),
}


@pytest.mark.parametrize("attack", list(TAR_ATTACKS))
def test_tar_members_that_escape_are_refused(url: str, area: Area, attack: str) -> None:
    odd, files, why = TAR_ATTACKS[attack]
    for info in odd:
        info.linkname = info.linkname.replace("{sentinel}", str(area.sentinel))
    files = {k.replace("{sentinel}", str(area.sentinel)): v for k, v in files.items()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:  # good members first, written then removed
        for name, data in {**class_tree(per_class=1)}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in odd:
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    member = odd[0].name if odd else next(iter(files))
    detail = area.refused(post(url, "evil.tar.gz", buf.getvalue()), 400, why, "evil.tar.gz")
    assert member in detail
    assert not (area.root / "escaped.txt").exists() and not (area.sentinel / "abs.txt").exists()


def _zip_with(name: str, data: bytes, mode: int | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for good, content in class_tree(per_class=1).items():
            zf.writestr(good, content)
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.create_system = 3
            info.external_attr = mode << 16
        zf.writestr(info, data)
        zf.writestr("link/pwned.txt", b"pwned")  # through the link, were it made
    return buf.getvalue()


ZIP_ATTACKS = {
    "dotdot": ("../escaped.txt", None, "'..' component"),
    "backslash dotdot": ("..\\escaped.txt", None, "'..' component"),
    "absolute": ("{sentinel}/abs.txt", None, "absolute path"),
    "symlink": ("link", stat.S_IFLNK | 0o777, "is a symbolic link"),
    "fifo": ("pipe", stat.S_IFIFO | 0o644, "is a fifo"),
    "device": ("null", stat.S_IFCHR | 0o644, "is a device file"),
}


@pytest.mark.parametrize("attack", list(ZIP_ATTACKS))
def test_zip_members_that_escape_are_refused(url: str, area: Area, attack: str) -> None:
    name, mode, why = ZIP_ATTACKS[attack]
    name = name.replace("{sentinel}", str(area.sentinel))
    body = _zip_with(name, b"../sentinel" if mode else b"pwned", mode)
    detail = area.refused(post(url, "evil.zip", body), 400, why, "evil.zip")
    assert name.replace("\\", "/") in detail


BOMBS = {
    "zip, one member": ("bomb.zip", {"zeros.png": 50_000_000}),
    "zip, many members": ("bomb.zip", {f"z{i}.png": 2_000_000 for i in range(8)}),
    "tar.gz, one member": ("bomb.tar.gz", {"zeros.png": 50_000_000}),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_zip_bomb_stops_at_the_limit(url: str, area: Area, bomb: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    filename, sizes = BOMBS[bomb]
    members = {name: bytes(size) for name, size in sizes.items()}
    body = make_zip(members) if filename.endswith(".zip") else make_tar(members)
    assert len(body) < 500_000
    limit = 10_000_000
    TARGET["limits"] = Limits(extracted_bytes=limit)
    read: list[int] = []
    written: list[int] = []
    real = uploads._copy

    class Spy:
        """Counts the bytes that pass through one side of a copy."""

        def __init__(self, inner: object, seen: list[int], method: str) -> None:
            self.inner, self.seen, self.method = inner, seen, method

        def read(self, n: int) -> bytes:
            chunk = self.inner.read(n)  # type: ignore[attr-defined]
            self.seen.append(len(chunk))
            return chunk

        def write(self, chunk: bytes) -> int:
            self.seen.append(len(chunk))
            return self.inner.write(chunk)  # type: ignore[attr-defined]

    def spy(src: object, dst: object, room: int) -> int:
        return real(Spy(src, read, "read"), Spy(dst, written, "write"), room)  # type: ignore[arg-type]

    monkeypatch.setattr(uploads, "_copy", spy)
    detail = area.refused(post(url, filename, body), 400)
    assert detail == f"{filename} expands past 10,000,000 bytes; refused while unpacking"
    assert 0 < sum(written) <= limit  # what reached the disk, over all members
    assert sum(read) <= limit + uploads.CHUNK  # it stopped there: the bomb holds 16-50 MB


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_member_count_is_capped(url: str, area: Area, kind: str) -> None:
    TARGET["limits"] = Limits(members=5)
    members = {f"a/{i}.png": png(i) for i in range(10)}
    body = make_zip(members) if kind == "zip" else make_tar(members)
    area.refused(post(url, f"many.{kind}", body), 400, f"many.{kind} holds more than 5 members")


LIMIT = 256 * 1024


@pytest.mark.parametrize(("size", "status"), [(LIMIT, 400), (LIMIT + 1, 413), (8 * LIMIT, 413)])
def test_upload_over_the_limit_with_content_length(url: str, area: Area, size: int, status: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """8x: refused by its Content-Length, before a byte is parsed; limit + 1: within the
    framing allowance, so refused at the byte that passes; exactly the limit is received (and
    is no zip: 400)."""
    TARGET["limits"] = Limits(upload_bytes=LIMIT)
    parsed: list[int] = []

    class Parser(uploads.MultipartParser):
        def write(self, data: bytes) -> int:
            parsed.append(len(data))
            return super().write(data)

    monkeypatch.setattr(uploads, "MultipartParser", Parser)
    resp = post(url, "big.zip", os.urandom(size))
    assert int(resp.request.headers["content-length"]) > size
    assert (sum(parsed) == 0) == (size > 2 * LIMIT)
    if status == 413:
        assert area.refused(resp, 413) == f"the upload is over the limit of {LIMIT:,} bytes"
    else:
        area.refused(resp, 400, "big.zip is not a readable .zip file")
    assert resp.headers.get("connection") != "close"  # the rest is read and dropped, not reset


def test_a_body_announced_past_the_drain_is_refused_and_its_connection_closed(
        url: str, area: Area) -> None:
    """Past DRAIN_BYTES the server reads none of the body: it answers 413 from the headers
    alone and closes (here the client sends no body, so nothing unread resets the answer)."""
    TARGET["limits"] = Limits(upload_bytes=LIMIT)
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/"
                     f"form-data; boundary=b\r\nContent-Length: {DRAIN_BYTES + 1}\r\n\r\n"
                     .encode())
        answer = b""
        while chunk := sock.recv(65536):  # to the server's close: it waits for no body
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower(), head
    assert f"over the limit of {LIMIT:,} bytes".encode() in body
    assert list(area.folder.iterdir()) == []


def test_upload_over_the_limit_chunked(url: str, area: Area) -> None:
    TARGET["limits"] = Limits(upload_bytes=LIMIT)
    boundary = "autofit-test-boundary"
    chunk, count, sent = os.urandom(64 * 1024), 1024, []  # 64 MiB if it were all read

    def body() -> Iterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
               f'filename="big.zip"\r\nContent-Type: application/zip\r\n\r\n').encode()
        for _ in range(count):
            sent.append(len(chunk))
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    with httpx.Client(timeout=60) as client:
        resp = client.post(url, content=body(),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in resp.request.headers
    assert resp.request.headers["transfer-encoding"] == "chunked"
    assert area.refused(resp, 413) == f"the upload is over the limit of {LIMIT:,} bytes"
    assert sum(sent) < count * len(chunk)  # the server stopped reading


def _members(corrupt: dict[str, bytes], per_class: int) -> dict[str, bytes]:
    return {**class_tree(per_class=per_class), **corrupt}


def test_too_many_unreadable_images_give_the_data_message(url: str, area: Area) -> None:
    truncated = png(1)[:40]
    members = _members({"bee/bad0.png": b"not an image", "cat/bad1.png": truncated}, 6)
    local = write_tree(area.root / "local", members)  # the same files, as `--data` sees them
    with pytest.raises(DataError) as err:
        dataset.load(local, seed=0, threads=1)
    expected = str(err.value).replace(f"{local}/", "")
    assert "2 of 32 images cannot be read" in expected
    area.before = area.outside()
    detail = area.refused(post(url, "pets.zip", make_zip(members)), 400)
    assert detail == expected


def test_a_few_unreadable_images_are_skipped_and_reported(url: str, area: Area) -> None:
    members = _members({"cat/bad.png": b"not an image"}, 20)  # 1 of 101: within the 1%
    resp = post(url, "pets.zip", make_zip(members))
    assert resp.status_code == 201, resp.text
    local = write_tree(area.root / "local", members)
    found = Found()
    discover(local, 0, found)
    expected = [reason.replace(f"{local}/", "") for _, reason in found.skipped]
    assert len(expected) == 1 and expected[0].startswith("cat/bad.png ")
    assert (resp.json()["images"], resp.json()["skipped"]) == (100, expected)
    assert unreadable_allowance(101) == 1


@pytest.mark.parametrize(("filename", "data", "words"), [
    ("notes.txt", b"just some text\n", ("must be a .zip, .tar.gz/.tgz or .npz", "notes.txt")),
    ("notes.zip", b"just some text\n", ("notes.zip is not a readable .zip file",)),
    ("notes.tar.gz", b"just some text\n", ("notes.tar.gz is not a readable .tar.gz file",)),
    ("empty.zip", make_zip({}), ("data directory empty.zip is empty",)),
])
def test_not_an_archive(url: str, area: Area, filename: str, data: bytes,
                        words: tuple[str, ...]) -> None:
    area.refused(post(url, filename, data), 400, *words)


def test_no_file_field(url: str, area: Area) -> None:
    resp = httpx.post(url, files={"name": (None, "just a name")}, timeout=30)
    area.refused(resp, 400, "no 'file' field")
    resp = httpx.post(url, files={"other": ("x.zip", make_zip(class_tree()))}, timeout=30)
    area.refused(resp, 400, "no 'file' field")
    area.refused(httpx.post(url, json={"file": "x"}, timeout=30), 400, "multipart/form-data")


def test_a_name_that_resolves_outside_is_refused(area: Area) -> None:
    """Defence in depth: unpacking never makes links, but were one there, a member through it
    would be refused before anything is written."""
    root = area.folder / "data"
    root.mkdir()
    (root / "link").symlink_to(area.sentinel)
    writer = uploads._Writer(root, Limits(), "x.zip")
    with pytest.raises(uploads.UploadError, match="would land outside the dataset folder"):
        writer.write("link/pwned.txt", lambda: io.BytesIO(b"pwned"))
    assert not (area.sentinel / "pwned.txt").exists()
