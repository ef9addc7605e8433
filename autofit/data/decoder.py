"""DALI decoding in a child process, so a decoder crash cannot take the run down.

DALI 2.4's CPU image decoder can crash the whole process (SIGSEGV) on some corrupt files
instead of raising. Decoding runs in a child (`python -m autofit.data.decoder`) that writes into
shared memory; the parent turns a crash or an error into a one-line message that names the
file, decoding the failed batch again one file at a time when DALI does not say which it was,
then leaves that file out and goes on (up to the number of files the caller lets it skip).
On a GPU the child decodes with nvJPEG (`device="mixed"`). This module imports no torch, so
the child starts in well under a second.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing import shared_memory

import numpy as np
import psutil

from autofit.errors import DataError, UnreadableData, one_line
from autofit.files import printable

DECODE_BATCH = 256
SHM_DIR = "/dev/shm"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # DALI colours its log lines


@contextmanager
def quiet_pil() -> Iterator[None]:
    """Hush PIL while it reads a file that may be malformed: its warnings and its log records
    (a bad TIFF logs an ERROR) would reach stderr beside the one-line error."""
    log = logging.getLogger("PIL")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def decode_room() -> int:
    """Bytes a decode may fill: the shared block lives in /dev/shm (a full one kills the child
    with SIGBUS) and is copied once into the parent, so half the free memory at most."""
    room = psutil.virtual_memory().available // 2
    if os.path.isdir(SHM_DIR):
        room = min(room, shutil.disk_usage(SHM_DIR).free)
    return room


def _decode_into(shm_name: str, files: list[str], shape: tuple[int, int, int, int],
                 threads: int, batch_size: int, offset: int = 0,
                 gpu: bool = False, resize: bool = True) -> dict[str, object]:
    """Child: decode `files[offset:]` in order into the shared array; say how it went. Before
    each batch it prints where the batch starts, so a crash inside DALI still tells which."""
    _, height, width, channels = shape
    pipe = _decoder_pipeline(files[offset:], height, width, channels, threads, batch_size, gpu,
                             resize)
    shm = _attach(shm_name)
    try:
        out = np.ndarray(shape, dtype=np.uint8, buffer=shm.buf)
        done = offset
        while done < len(files):
            print(json.dumps({"start": done}), flush=True)
            try:
                (batch,) = pipe.run()
            except RuntimeError as err:
                return {"status": "error", "start": done, "reason": one_line(err)}
            arr = (batch.as_cpu() if gpu else batch).as_array()
            take = min(len(arr), len(files) - done)
            out[done:done + take] = arr[:take]
            done += take
        del out
        return {"status": "ok"}
    finally:
        shm.close()


def _decoder_pipeline(files: list[str] | None, height: int, width: int, channels: int,
                      threads: int, batch_size: int, gpu: bool,
                      resize: bool = True):  # type: ignore[no-untyped-def]
    """DALI reads `files` (or, when None, encoded bytes fed to "encoded"), decodes them on
    the CPU or with nvJPEG on the GPU (`device="mixed"`), and resizes to height x width unless
    the caller knows every image is that size already (the resize is 40% of a CIFAR decode)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=0 if gpu else None,
                  prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    def decoder():  # type: ignore[no-untyped-def]
        if files is None:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
        else:
            encoded, _ = fn.readers.file(files=files, name="reader", random_shuffle=False,
                                         pad_last_batch=True)
        out_type = types.GRAY if channels == 1 else types.RGB
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu",
                                   output_type=out_type)
        return fn.resize(images, resize_x=width, resize_y=height) if resize else images

    pipe = decoder()
    pipe.build()
    return pipe


def decode_gpu_bytes(encoded: list[np.ndarray], height: int, width: int,
                     channels: int) -> np.ndarray:
    """Encoded images decoded with nvJPEG in this process: the GPU path's self-test."""
    pipe = _decoder_pipeline(None, height, width, channels, 1, len(encoded), gpu=True)
    pipe.feed_input("encoded", encoded)
    (batch,) = pipe.run()
    return batch.as_cpu().as_array()


def _attach(name: str) -> shared_memory.SharedMemory:
    """Open the parent's block without adopting it: before Python 3.13 the child's resource
    tracker would otherwise unlink it when the child exits."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    from multiprocessing import resource_tracker

    shm = shared_memory.SharedMemory(name=name)
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def _child_main() -> None:
    """`python -m autofit.data.decoder`: the job comes as JSON on stdin, the report goes to
    stdout."""
    job = json.load(sys.stdin)
    report = _decode_into(job["shm"], job["files"], tuple(job["shape"]), job["threads"],
                          job["batch"], job["offset"], job["gpu"], job["resize"])
    sys.stdout.write(json.dumps(report) + "\n")


def decode(files: Sequence[str], height: int, width: int, channels: int, threads: int, *,
           max_bad: int = 0, gpu: bool = False,
           resize: bool = True) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode and resize image files to an N x H x W x C uint8 array, in file order.

    A file that fails is left out and the decode goes on from its batch, up to `max_bad`
    files; returns the pixels of the others and (file, reason) for each one left out."""
    todo, bad = list(files), []
    with _shared((len(todo), height, width, channels)) as shm:
        offset = 0
        while True:
            shape = (len(todo), height, width, channels)
            report = _run_child(shm.name, todo, shape, threads, DECODE_BATCH, offset, gpu,
                                resize)
            if report["status"] == "ok":
                pixels = np.ndarray(shape, dtype=np.uint8, buffer=shm.buf).copy()
                return pixels, bad
            culprit, message = _culprit(todo, report, shape, threads, gpu)
            if culprit is None:
                raise DataError(message)
            bad.append((todo.pop(culprit), message))
            if len(bad) > max_bad:
                raise UnreadableData(message, bad)
            offset = _start(report) or 0


@contextmanager
def _shared(shape: tuple[int, ...]) -> Iterator[shared_memory.SharedMemory]:
    shm = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(shape))))
    try:
        yield shm
    finally:
        shm.close()
        shm.unlink()


def _run_child(shm_name: str, files: list[str], shape: tuple[int, int, int, int],
               threads: int, batch_size: int, offset: int = 0, gpu: bool = False,
               resize: bool = True) -> dict[str, object]:
    """The child's report, or a "crash" one when it died without one, with where the batch it
    died in starts when it got that far."""
    job = json.dumps({"shm": shm_name, "files": files, "shape": shape, "threads": threads,
                      "batch": batch_size, "offset": offset, "gpu": gpu, "resize": resize})
    proc = subprocess.run([sys.executable, "-m", "autofit.data.decoder"], input=job,
                          capture_output=True, text=True, check=False)
    said = _records(proc.stdout)
    if proc.returncode == 0 and said and "status" in said[-1]:
        return said[-1]
    complaint = [line for line in ANSI.sub("", proc.stderr).splitlines() if line.strip()]
    reason = f"the decoder crashed (exit code {proc.returncode})"
    if complaint:
        reason += f": {one_line(complaint[-1])[:200]}"
    return {"status": "crash", "reason": reason, "start": said[-1]["start"] if said else None}


def _records(stdout: str) -> list[dict[str, object]]:
    """The child's JSON lines, skipping anything else a library printed."""
    records = []
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _start(report: dict[str, object]) -> int | None:
    start = report.get("start")
    return None if start is None else int(start)  # type: ignore[call-overload]


def _culprit(files: list[str], report: dict[str, object], shape: tuple[int, int, int, int],
             threads: int, gpu: bool) -> tuple[int | None, str]:
    """The index of the file the decode failed on, and one line naming it (None when no one
    file can be blamed). The failure is narrowed to its batch; when DALI's error does not name
    the file (a crash never does), that batch is decoded again one file at a time in a new
    child, so the failure itself says which file it was."""
    start, reason = _start(report), str(report["reason"])
    first = start or 0
    suspects = files if start is None else files[start:start + DECODE_BATCH]
    if len(suspects) > 1 and _named(suspects, reason) is None:
        one_by_one = (len(suspects), *shape[1:])
        with _shared(one_by_one) as shm:
            again = _run_child(shm.name, suspects, one_by_one, threads, 1, 0, gpu)
        culprit = _start(again)
        if again["status"] != "ok" and culprit is not None:
            first += culprit
            suspects, reason = suspects[culprit:culprit + 1], str(again["reason"])
    path, message = _name_the_file(suspects, reason, "nvJPEG" if gpu else "DALI's CPU decoder")
    return (None if path is None else first + suspects.index(path)), message


def _named(candidates: Sequence[str], reason: str) -> str | None:
    """The candidate DALI's error names (the longest, should one name be a prefix of another),
    or the only candidate."""
    if len(candidates) == 1:
        return candidates[0]
    named = sorted((p for p in candidates if p in reason), key=len)
    return named[-1] if named else None


def _name_the_file(candidates: Sequence[str], reason: str,
                   decoder: str) -> tuple[str | None, str]:
    """The file DALI failed on, else the first one PIL fails to decode too, with one line
    saying why. PIL's reason is the clearer, DALI's the fallback: PIL reads some files DALI
    refuses (a PNG whose last chunk is cut) or crashes on (a JPEG with a bad marker)."""
    named = _named(candidates, reason)
    for path in [named] if named is not None else candidates:
        failure = _pil_failure(path)
        if failure is not None:
            return path, f"cannot decode image {printable(path)}: {failure}"
    if named is not None:
        what = "crashed on it" if reason.startswith("the decoder crashed") else "fails on it"
        return named, f"cannot decode image {printable(named)}: {decoder} {what}"
    return None, (f"cannot decode an image among {printable(candidates[0])} .. "
                  f"{printable(candidates[-1])}: {printable(reason)}")


def _pil_failure(path: str) -> str | None:
    """Why PIL cannot decode `path`, or None when it can."""
    from PIL import Image

    try:
        with quiet_pil(), Image.open(path) as img:
            img.load()
    except Exception as bad:  # noqa: BLE001 - any failure identifies the file
        return one_line(bad)
    return None


if __name__ == "__main__":
    _child_main()
