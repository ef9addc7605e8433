"""DALI decoding in a child process, so a decoder crash cannot take the run down.

DALI 2.4's CPU image decoder can crash the whole process (SIGSEGV) on some corrupt files
instead of raising. Decoding runs in a child (`python -m autofit.decoder`) that writes into
shared memory; the parent turns a crash or an error into a one-line DataError that names the
file. This module imports no torch, so the child starts in well under a second.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing import shared_memory

import numpy as np

from autofit.errors import DataError, one_line

DECODE_BATCH = 256


def _decode_into(shm_name: str, files: list[str], shape: tuple[int, int, int, int],
                 threads: int) -> dict[str, object]:
    """Child: decode `files` in order into the shared array; say how it went."""
    from nvidia.dali import fn, pipeline_def, types

    _, height, width, channels = shape

    @pipeline_def(batch_size=DECODE_BATCH, num_threads=threads, device_id=None,
                  prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    def decoder():  # type: ignore[no-untyped-def]
        encoded, _ = fn.readers.file(files=files, name="reader", random_shuffle=False,
                                     pad_last_batch=True)
        out_type = types.GRAY if channels == 1 else types.RGB
        images = fn.decoders.image(encoded, device="cpu", output_type=out_type)
        return fn.resize(images, resize_x=width, resize_y=height)

    shm = _attach(shm_name)
    try:
        out = np.ndarray(shape, dtype=np.uint8, buffer=shm.buf)
        pipe = decoder()
        pipe.build()
        done = 0
        while done < len(files):
            try:
                (batch,) = pipe.run()
            except RuntimeError as err:
                return {"status": "error", "start": done, "reason": one_line(err)}
            arr = batch.as_array()
            take = min(len(arr), len(files) - done)
            out[done:done + take] = arr[:take]
            done += take
        del out
        return {"status": "ok"}
    finally:
        shm.close()


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
    """`python -m autofit.decoder`: the job comes as JSON on stdin, the report goes to stdout."""
    job = json.load(sys.stdin)
    report = _decode_into(job["shm"], job["files"], tuple(job["shape"]), job["threads"])
    sys.stdout.write(json.dumps(report) + "\n")


def decode(files: Sequence[str], height: int, width: int, channels: int,
           threads: int) -> np.ndarray:
    """Decode and resize image files to an N x H x W x C uint8 array, in file order."""
    shape = (len(files), height, width, channels)
    shm = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(shape))))
    try:
        report = _run_child(shm.name, list(files), shape, threads)
        if report["status"] == "ok":
            return np.ndarray(shape, dtype=np.uint8, buffer=shm.buf).copy()
        start = int(report.get("start", 0))  # type: ignore[call-overload]
        suspects = files[start:start + DECODE_BATCH] if report["status"] == "error" else files
        raise DataError(_undecodable(suspects, str(report["reason"])))
    finally:
        shm.close()
        shm.unlink()


def _run_child(shm_name: str, files: list[str], shape: tuple[int, int, int, int],
               threads: int) -> dict[str, object]:
    """The child's report, or a "crash" one when it died without one."""
    job = json.dumps({"shm": shm_name, "files": files, "shape": shape, "threads": threads})
    proc = subprocess.run([sys.executable, "-m", "autofit.decoder"], input=job,
                          capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {"status": "crash", "reason": f"the decoder crashed (exit code {proc.returncode})"}


def _undecodable(candidates: Sequence[str], reason: str) -> str:
    """Name the file DALI failed on by decoding the candidates with PIL until one fails."""
    from PIL import Image

    for path in candidates:
        try:
            with Image.open(path) as img:
                img.load()
        except Exception as bad:  # noqa: BLE001 - any failure identifies the file
            return f"cannot decode image {path}: {one_line(bad)}"
    return f"cannot decode an image among {candidates[0]} .. {candidates[-1]}: {reason}"


if __name__ == "__main__":
    _child_main()
