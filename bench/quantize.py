"""Benchmark: INT8 against float for a finished run's model.onnx, as `--quantize int8` makes it.

    python bench/quantize.py RUN_DIR [--out FILE.json] [--threads N]

Loads the run's data again (its journal names the data, the seed and the data root), then does
what a run with `--quantize int8` does after its test pass (autofit/deliver/quantize.py): the
same calibration sample, quantization and checks, the test pass of both models and both
batch-1 timings, each step timed. Prints one JSON document (and writes it with --out): the
machine, the run, accuracy and its drop, top-1 agreement, file sizes, latencies and speed-up,
and seconds per step. Nothing is written into RUN_DIR; the INT8 file goes to a temporary
folder. For a run made with --quantize, its summary's `int8` is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine

from autofit.data.dataset import load
from autofit.deliver import quantize
from autofit.deliver.latency import batch1_latency
from autofit.records import JournalState, Summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
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
        calibration = quantize.calibration_sample(dataset.x_train, journal.args.seed)
        timed("quantize", lambda: quantize.quantize_file(model_path, int8_path, calibration))
        got = timed("int8_test_pass",
                    lambda: quantize.predictions(int8_path, dataset.x_test, threads))
        assert got is not None
        int8 = quantize.score(got, dataset.y_test, len(dataset.classes))
        shape = (int(dataset.shape[0]), int(dataset.shape[1]), int(dataset.shape[2]))
        timed_float = timed("float_latency", lambda: batch1_latency(model_path, shape, threads))
        timed_int8 = timed("int8_latency", lambda: batch1_latency(int8_path, shape, threads))
        agreement = float(np.mean(got == tested.predicted))
        result = {
            "machine": machine(), "run_dir": str(run_dir), "data": journal.args.data,
            "test_images": len(dataset.y_test), "calibration_images": len(calibration),
            "method": quantize.METHOD, "agreement": round(agreement, 6),
            "agreement_bar": quantize.AGREEMENT_BAR,
            "kept": agreement >= quantize.AGREEMENT_BAR,
            "float_test_accuracy": tested.score.accuracy, "int8_test_accuracy": int8.accuracy,
            "accuracy_drop": round(tested.score.accuracy - int8.accuracy, 6),
            "float_bytes": model_path.stat().st_size, "int8_bytes": int8_path.stat().st_size,
            "float_latency": timed_float.model_dump(), "int8_latency": timed_int8.model_dump(),
            "speedup_batch1": round(timed_float.median_ms / timed_int8.median_ms, 3),
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
