"""Benchmark: autofit's DALI data path against the PIL/torchvision way, in one run.

    python bench/data_pipeline.py            # full CIFAR-10 JPEG set (a few minutes)
    python bench/data_pipeline.py --limit 2000   # smoke run

Measures, so the ratios come from one machine state: (1) decoding the 60k JPEGs once with
autofit.data.decoder (DALI CPU in a child process) against PIL with a thread pool and single
threaded; (2) one augmented training epoch through autofit's BatchLoader against a
torchvision Dataset + DataLoader; (3) a training step against a DALI batch, to tell whether
data is the bottleneck. Writes bench/results/data_pipeline.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10 import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpg"
SIZE = 32
BATCH = 256
DECODE_TARGET_S = 10.0  # for the full 60k images
RATIO_TARGET = 2.0  # DALI epoch images/s over torchvision's
WARMUP_BATCHES = 3
STEP_WARMUP = 3
STEPS = 10
SINGLE_THREAD_MAX_S = 120.0  # PIL single-threaded is skipped when the pool run says it exceeds


def rate(n: int, seconds: float) -> float:
    return round(n / max(seconds, 1e-9), 1)


def versions() -> dict[str, object]:
    """What the figures depend on besides the CPU: library versions and whether CUDA is here."""
    import nvidia.dali
    import PIL
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "dali": nvidia.dali.__version__, "pillow": PIL.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available(),
            "torch_threads_default": torch.get_num_threads()}


# --- 1. decode once -------------------------------------------------------------------------


def pil_decode(files: list[str], threads: int) -> tuple[np.ndarray, float]:
    """PIL into a preallocated array, `threads` at a time: the fair baseline on these cores."""
    out = np.empty((len(files), SIZE, SIZE, 3), dtype=np.uint8)

    def one(i: int) -> None:
        with Image.open(files[i]) as img:
            out[i] = np.asarray(img.convert("RGB"))

    start = time.perf_counter()
    if threads <= 1:
        for i in range(len(files)):
            one(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(one, range(len(files)), chunksize=256):
                pass
    return out, time.perf_counter() - start


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Mean and max absolute pixel difference, in chunks (no full-size int copy)."""
    total, worst = 0, 0
    for i in range(0, len(a), 4096):
        d = np.abs(a[i:i + 4096].astype(np.int16) - b[i:i + 4096].astype(np.int16))
        total += int(d.sum(dtype=np.int64))
        worst = max(worst, int(d.max(initial=0)))
    return total / max(a.size, 1), worst


def dali_decode(files: list[str], threads: int) -> np.ndarray:
    """autofit.data.decoder.decode's pixels (DALI CPU in its child process), as a run gets them:
    every
    CIFAR header says 32x32, so the run skips the resize."""
    from autofit.data import decoder

    pixels, _ = decoder.decode(files, SIZE, SIZE, 3, threads, resize=False)
    return pixels


def decode_overheads(files: list[str], threads: int, shape: tuple[int, ...]) -> dict[str, float]:
    """Where a decode's time goes besides decoding: starting the child (Python, then DALI's
    import and pipeline build), measured as a one-file decode; and copying the result out of
    shared memory the way decoder.decode does (the parent maps pages the child filled)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import autofit.data.decoder"], check=True)
    python_start = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import autofit.data.decoder, nvidia.dali.fn"],
                   check=True)
    dali_import = time.perf_counter() - start
    start = time.perf_counter()
    dali_decode(files[:1], threads)
    one_file = time.perf_counter() - start

    size = int(np.prod(shape))
    shm = shared_memory.SharedMemory(create=True, size=size)
    try:
        other = shared_memory.SharedMemory(name=shm.name)  # the "child's" mapping
        np.ndarray((size,), np.uint8, buffer=other.buf)[:] = 7
        other.close()
        start = time.perf_counter()
        np.ndarray(shape, dtype=np.uint8, buffer=shm.buf).copy()
        copy_out = time.perf_counter() - start
    finally:
        shm.close()
        shm.unlink()
    return {"python_child_start_s": round(python_start, 3),
            "child_start_with_dali_import_s": round(dali_import, 3),
            "one_file_decode_s": round(one_file, 3),
            "copy_out_of_shm_s": round(copy_out, 3)}


def bench_decode(args: argparse.Namespace) -> tuple[dict[str, object], np.ndarray, np.ndarray]:
    from autofit.data import discover

    start = time.perf_counter()
    _, train, test, _ = discover.discover(Path(args.data), seed=0)
    listing_s = time.perf_counter() - start
    listed = len(train.files) + len(test.files)
    limit = args.limit or None
    train_files, test_files = train.files[:limit], test.files[:limit]
    files = train_files + test_files
    n = len(files)

    start = time.perf_counter()
    dali = dali_decode(files, args.threads)
    dali_s = time.perf_counter() - start
    pil, pil_s = pil_decode(files, args.threads)
    mad, worst = mean_abs_diff(dali, pil)
    del pil

    single: dict[str, object]
    guess = pil_s * max(args.threads, 1)
    if guess <= SINGLE_THREAD_MAX_S:
        _, one_s = pil_decode(files, 1)
        single = {"seconds": round(one_s, 2), "images_per_s": rate(n, one_s)}
    else:
        single = {"skipped": f"would take about {guess:.0f} s (> {SINGLE_THREAD_MAX_S:.0f} s)"}

    overheads = decode_overheads(files, args.threads, dali.shape)
    fixed = overheads["one_file_decode_s"] + overheads["copy_out_of_shm_s"]
    full = n >= 60000  # the target is for the whole set; a smoke run is mostly fixed cost
    result = {
        "images": n, "train_images": len(train_files), "test_images": len(test_files),
        "listing": {"seconds": round(listing_s, 2), "files_listed": listed,
                    "note": "discover.discover: listing + header checks of every file, full set "
                            "even with --limit"},
        "dali": {"seconds": round(dali_s, 2), "images_per_s": rate(n, dali_s),
                 "target_s": DECODE_TARGET_S if full else "applies to the full 60k only",
                 "target_met": dali_s <= DECODE_TARGET_S if full else None,
                 "breakdown": {**overheads,
                               "decode_itself_s_estimate": round(max(dali_s - fixed, 0.0), 2)}},
        "pil_threads": {"threads": args.threads, "seconds": round(pil_s, 2),
                        "images_per_s": rate(n, pil_s)},
        "pil_single": single,
        "dali_over_pil_threads": round(pil_s / dali_s, 2),
        "listing_plus_dali_s": round(listing_s + dali_s, 2),
        "dali_vs_pil_mean_abs_diff": round(mad, 4),
        "dali_vs_pil_max_abs_diff": worst,
    }
    labels = np.asarray(train.labels[:limit], dtype=np.int64)
    return result, dali[:len(train_files)], labels


# --- 2. augment + feed, one epoch -----------------------------------------------------------


def loader_epoch(x: np.ndarray, y: np.ndarray, threads: int, path: str = "dali-cpu",
               **extra: float) -> dict[str, object]:
    """One warm epoch of autofit's training loader on `path`: what every trial epoch costs."""
    from autofit.data import pipeline

    start = time.perf_counter()
    loader = pipeline.loader(path, x, y, BATCH, train=True, hflip=True, seed=0,
                             threads=threads, **extra)
    build_s = time.perf_counter() - start
    layout = "contiguous"
    for i, (xb, _) in enumerate(loader):
        if xb.is_contiguous(memory_format=torch.channels_last):
            layout = "channels_last"
        if i + 1 >= WARMUP_BATCHES:
            break
    start = time.perf_counter()
    batches = 0
    for _ in loader:
        batches += 1
    epoch_s = time.perf_counter() - start
    images = batches * BATCH
    return {"build_s": round(build_s, 3), "batches": batches, "epoch_s": round(epoch_s, 2),
            "images_per_s": rate(images, epoch_s),
            "s_per_batch": round(epoch_s / max(batches, 1), 5),
            "batch_layout": layout,
            **extra}


class ArrayDataset(TorchDataset):
    """In-memory uint8 images the way torchvision.datasets.CIFAR10 serves them: a PIL image
    per item, then the transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: object) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def torchvision_epoch(x: np.ndarray, y: np.ndarray) -> dict[str, object]:
    """One epoch of the usual torchvision pipeline, worker start-up timed on its own."""
    from torchvision import transforms

    tf = transforms.Compose([transforms.RandomCrop(SIZE, padding=4),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    workers = 2
    loader = DataLoader(ArrayDataset(x, y, tf), batch_size=BATCH, shuffle=True,
                        num_workers=workers, drop_last=True, persistent_workers=False)
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first_s = time.perf_counter() - start
    batches = 1
    for _ in it:
        batches += 1
    epoch_s = time.perf_counter() - start
    steady_s = epoch_s - first_s
    steady = (batches - 1) * BATCH
    return {"num_workers": workers, "batches": batches, "epoch_s": round(epoch_s, 2),
            "startup_s": round(first_s, 3),
            "note": "startup_s: iterator creation (worker start) to the first batch",
            "images_per_s": rate(batches * BATCH, epoch_s),
            "steady_images_per_s": rate(steady, steady_s) if steady else None,
            "s_per_batch_steady": round(steady_s / (batches - 1), 5) if steady else None}


def bench_feed(x: np.ndarray, y: np.ndarray, threads: int) -> dict[str, object]:
    result: dict[str, object] = {"images": len(x), "batch": BATCH,
                                 "dali": loader_epoch(x, y, threads),
                                 "dali_cutout": loader_epoch(x, y, threads, cutout=0.25),
                                 "torch_path": loader_epoch(x, y, threads, path="torch")}
    tv = torchvision_epoch(x, y)
    result["torchvision"] = tv
    dali_rate = float(result["dali"]["images_per_s"])  # type: ignore[index]
    steady = tv["steady_images_per_s"] or tv["images_per_s"]
    ratio = dali_rate / max(float(steady), 1e-9)  # type: ignore[arg-type]
    result["ratio_dali_over_torchvision_steady"] = round(ratio, 2)
    result["ratio_dali_over_torchvision_with_startup"] = round(
        dali_rate / max(float(tv["images_per_s"]), 1e-9), 2)  # type: ignore[arg-type]
    result["ratio_target"] = RATIO_TARGET
    result["ratio_target_met"] = ratio >= RATIO_TARGET
    return result


# --- 3. training step vs data time ----------------------------------------------------------


def step_time(arch: dict[str, int], x: torch.Tensor, y: torch.Tensor,
              mean: list[float], std: list[float]) -> dict[str, object]:
    """Seconds per training step, as autofit's train.loop.train builds and steps it: channels_last
    Classifier, SGD Nesterov with decay on weights only, cross-entropy, loss.item() per step."""
    from autofit import models

    model = models.Classifier(models.build("resnet", arch, 3, 10, SIZE), mean, std)
    model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.05, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    times = []
    for i in range(STEP_WARMUP + STEPS):
        start = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        if i >= STEP_WARMUP:
            times.append(time.perf_counter() - start)
    return {"arch": arch, "params": params, "steps": STEPS,
            "step_s": round(float(np.mean(times)), 4),
            "step_s_median": round(float(np.median(times)), 4),
            "step_s_min": round(float(np.min(times)), 4),
            "step_times_s": [round(t, 4) for t in times]}


def bench_steps(x: np.ndarray, y: np.ndarray, threads: int,
                data_s: float) -> dict[str, object]:
    from autofit.data.pipeline import BatchLoader

    pixels = x.reshape(-1, 3)
    mean = [round(float(m), 6) for m in pixels.mean(0) / 255.0]
    std = [round(float(s), 6) for s in pixels[: 10_000_000 // 3].std(0) / 255.0]
    xb, yb = next(iter(BatchLoader(x, y, BATCH, train=True, seed=0, threads=threads)))
    result: dict[str, object] = {"batch": len(yb), "torch_threads": threads,
                                 "data_s_per_batch": round(data_s, 5)}
    for name, arch in (("resnet20_w16", {"depth": 20, "width": 16}),
                       ("resnet8_w16", {"depth": 8, "width": 16})):
        r = step_time(arch, xb, yb, mean, std)
        step = float(r["step_s"])  # type: ignore[arg-type]
        fraction = data_s / (data_s + step)
        r["data_fraction"] = round(fraction, 4)
        fastest = float(r["step_s_min"])  # type: ignore[arg-type]
        r["data_fraction_at_fastest_step"] = round(data_s / (data_s + fastest), 4)  # an upper
        # bound that holds even when another process shares the cores during the steps
        r["data_is_bottleneck"] = fraction > 0.5
        r["images_per_s_serial"] = rate(len(yb), data_s + step)
        result[name] = r
    return result


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=0,
                        help="use only the first N files per split (smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / "data_pipeline.json")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"bench: CIFAR-10 JPEGs not found at {args.data}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    began, load_before = time.perf_counter(), list(os.getloadavg())  # others' load skews it
    record: dict[str, object] = {"bench": "data_pipeline", "data": str(args.data),
                                 "limit": args.limit or None, "threads": args.threads,
                                 "machine": machine(), "versions": versions()}
    decode, x_train, y_train = bench_decode(args)
    record["decode"] = decode
    feed = bench_feed(x_train, y_train, args.threads)
    record["feed"] = feed
    data_s = float(feed["dali"]["s_per_batch"])  # type: ignore[index]
    record["train_step"] = bench_steps(x_train, y_train, args.threads, data_s)
    record["gpu"] = ("not measured: GPU path not benchmarked yet" if torch.cuda.is_available()
                     else "not measured: no GPU on this machine")
    record["elapsed_s"] = round(time.perf_counter() - began, 1)
    record["load_average_before_after"] = [load_before, list(os.getloadavg())]
    record["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")

    d, f, t = decode, feed, record["train_step"]
    print(f"decode {d['images']} images: listing {d['listing']['seconds']} s, "
          f"DALI {d['dali']['seconds']} s ({d['dali']['images_per_s']}/s, target "
          f"{ {True: 'met', False: 'MISSED', None: 'n/a'}[d['dali']['target_met']] }), "
          f"PIL x{args.threads} "
          f"{d['pil_threads']['seconds']} s, mean |diff| {d['dali_vs_pil_mean_abs_diff']}")
    print(f"epoch {f['images']} images: DALI {f['dali']['images_per_s']}/s, torchvision "
          f"{f['torchvision']['steady_images_per_s']}/s steady (start-up "
          f"{f['torchvision']['startup_s']} s), ratio "
          f"{f['ratio_dali_over_torchvision_steady']}")
    for name in ("resnet20_w16", "resnet8_w16"):
        r = t[name]  # type: ignore[index]
        print(f"{name}: step {r['step_s']} s vs data {t['data_s_per_batch']} s per batch, "
              f"data fraction {r['data_fraction']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
