"""Real data: the CIFAR-10 JPEGs in ../shared (a slice in CI; the whole set when marked slow)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autofit.data import pipeline

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpg"
needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason=f"no CIFAR-10 JPEGs at {CIFAR}")


@needs_cifar
@pytest.mark.parametrize("path", [pipeline.DALI_CPU, pipeline.TORCH])
def test_decoders_read_cifar_jpegs_like_pil(path: str):
    files = [str(p) for c in sorted((CIFAR / "test").iterdir()) for p in sorted(c.iterdir())[:10]]
    decoded, bad = pipeline.decode(pipeline.DataPath(path, ""), files, 32, 32, 3, threads=2)
    reference = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    assert decoded.shape == (100, 32, 32, 3) and not bad
    assert np.abs(decoded.astype(int) - reference).mean() < 1.0  # JPEG decoders round apart


@needs_cifar
@pytest.mark.slow
def test_two_minute_cifar_run_keeps_the_deadline(tmp_path: Path):
    out = tmp_path / "run"
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "autofit", "run", "--data", str(CIFAR),
                           "--minutes", "2", "--max-params", "2M", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    wall = time.time() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert wall <= 120 * 1.03
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.2 and summary["params"] <= 2_000_000
