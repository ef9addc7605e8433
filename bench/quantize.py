"""Benchmark: INT8 against float for a finished run's model.onnx, as `--quantize int8` makes it.

    python bench/quantize.py RUN_DIR [--out FILE.json] [--threads N]

Loads the run's data again (its journal names the data, the seed and the data root), then does
what a run with `--quantize int8` does after its test pass (autofit/deliver/quantize.py): the
same calibration sample, each calibration method quantized and compared on the validation
images (the one chosen as a run chooses it), and for each its test pass. Then both models'
batch-1 latency, alternated over `--rounds` rounds, on the run's threads and on 1. Prints one
JSON document (and writes it with --out): the machine, the run, accuracy and its drop, top-1
agreement, file sizes, latencies and speed-up, and seconds per step. Nothing is written into
RUN_DIR; the INT8 files go to a temporary folder. For a run made with --quantize, its
summary's `int8` is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine

from autofit.data.dataset import load
from autofit.deliver import quantize
from autofit.deliver.int8_file import (
    CALIBRATION_METHODS,
    METHOD,
    calibration_sample,
    quantize_file,
)
from autofit.deliver.latency import batch1_latency
from autofit.records import JournalState, Summary
from autofit.reserves import CHOICE_IMAGES


def alternated(float_path: Path, int8_path: Path, shape: tuple[int, int, int],
               thread_counts: list[int], rounds: int) -> dict[str, dict]:
    """Both models' batch-1 medians, `rounds` times each, alternating which goes first (one
    timing after another of one file drifts with the shared machine), per thread count."""
    out = {}
    for threads in thread_counts:
        ms: dict[str, list[float]] = {"float": [], "int8": []}
        for r in range(rounds):
            pair = [("float", float_path), ("int8", int8_path)]
            for name, path in pair if r % 2 == 0 else pair[::-1]:
                ms[name].append(batch1_latency(path, shape, threads).median_ms)
        med = {k: statistics.median(v) for k, v in ms.items()}
        out[str(threads)] = {"float_ms": ms["float"], "int8_ms": ms["int8"],
                             "float_median_ms": med["float"], "int8_median_ms": med["int8"],
                             "speedup": round(med["float"] / med["int8"], 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=5,
                        help="batch-1 timings of each model per thread count, alternated")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime intra-op threads (default: the run's, else 2)")
    args = parser.parse_args()
    run_dir: Path = args.run_dir
    journal = JournalState.read(run_dir / "journal.json")
    summary = Summary.read(run_dir / "summary.json")
    if journal is None or not (run_dir / quantize.FLOAT).is_file():
        sys.exit(f"bench/quantize.py: {run_dir} holds no finished autofit run (journal.json, "
                 "model.onnx)")
    threads = args.threads or (summary.threads if summary and summary.threads else 2)
    started = time.time()
    dataset = load(journal.args.data, journal.args.seed, threads,
                   data_root=None if journal.args.data_root is None else
                   Path(journal.args.data_root))
    load_s = time.time() - started
    model_path = run_dir / quantize.FLOAT
    with tempfile.TemporaryDirectory(prefix="autofit-int8-") as tmp:
        int8_path = Path(tmp) / quantize.FILE
        seconds: dict[str, float] = {"load_data": round(load_s, 3)}

        def timed(name: str, step):  # type: ignore[no-untyped-def]
            start = time.time()
            value = step()
            seconds[name] = round(time.time() - start, 3)
            return value

        tested = timed("float_test_pass",
                       lambda: quantize.float_test_pass(model_path, dataset, threads))
        calibration = calibration_sample(dataset.x_train, journal.args.seed)
        choice = dataset.x_val[:CHOICE_IMAGES]
        float_choice = quantize.predictions(model_path, choice, threads)
        shape = (int(dataset.shape[0]), int(dataset.shape[1]), int(dataset.shape[2]))
        methods: dict[str, dict] = {}
        for method in CALIBRATION_METHODS:  # each as the run tries it, then its test figures
            path = int8_path.with_name(f"{method}.onnx")
            timed(f"quantize_{method}", lambda p=path, m=method: quantize_file(
                model_path, p, calibration, m))
            on_val = quantize.predictions(path, choice, threads)
            got = timed(f"int8_test_pass_{method}",
                        lambda p=path: quantize.predictions(p, dataset.x_test, threads))
            assert got is not None and on_val is not None
            int8 = quantize.score(got, dataset.y_test, len(dataset.classes))
            methods[method] = {
                "val_agreement": round(float(np.mean(on_val == float_choice)), 6),
                "agreement": round(float(np.mean(got == tested.predicted)), 6),
                "int8_test_accuracy": int8.accuracy,
                "accuracy_drop": round(tested.score.accuracy - int8.accuracy, 6),
                "int8_bytes": path.stat().st_size,
                "latency": timed(f"latency_{method}", lambda p=path: alternated(
                    model_path, p, shape, sorted({threads, 1}), args.rounds))}
        chosen = max(methods, key=lambda m: methods[m]["val_agreement"])  # the first of equals
        result = {
            "machine": machine(), "run_dir": str(run_dir), "data": journal.args.data,
            "test_images": len(dataset.y_test), "calibration_images": len(calibration),
            "choice_images": len(choice), "method": METHOD, "chosen": chosen,
            "agreement_bar": quantize.AGREEMENT_BAR,
            "kept": methods[chosen]["agreement"] >= quantize.AGREEMENT_BAR,
            "float_test_accuracy": tested.score.accuracy,
            "float_bytes": model_path.stat().st_size,
            **methods[chosen], "methods": methods,
            "float_test_images_per_s": round(tested.rate, 1), "seconds": seconds,
            "run_int8": None if summary is None or summary.int8 is None else
            summary.int8.model_dump(mode="json"),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
