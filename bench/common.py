"""What the CIFAR-10 benches share: where the repository and the JPEGs are, the `--data`
prologue (one message, exit 2, when the data is missing), a deterministic class-balanced
slice of a split, the default space's prior as a model and its loader, and the machine a
result was measured on.

The benches run as scripts (`python bench/NAME.py`), so they import this as `common`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpg"


def machine() -> dict[str, object]:
    """CPU model, cores, GPU and Python: a timing means little without them."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version()}


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """`--data DIR`, defaulting to the shared CIFAR-10 JPEGs."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"CIFAR-10 JPEGs as DIR/train/<class>/*.jpg (default {DEFAULT_DATA})")


def check_data(data: Path, splits: bool = False) -> bool:
    """Whether the data is there (with `splits`: its train/ and test/ folders); says why not
    on stderr, so a bench exits 2 with one line instead of a traceback."""
    if splits:
        if (data / "train").is_dir() and (data / "test").is_dir():
            return True
        print(f"bench: CIFAR-10 JPEGs (train/ and test/) not found at {data}", file=sys.stderr)
        return False
    if data.is_dir():
        return True
    print(f"bench: CIFAR-10 JPEGs not found at {data}", file=sys.stderr)
    return False


def listing(root: Path, split: str, per_class: int) -> tuple[list[str], np.ndarray, list[str]]:
    """The first `per_class` files (sorted) of each class folder of `root/split`: a
    deterministic, class-balanced slice (0: all of them)."""
    classes = sorted(d.name for d in (root / split).iterdir() if d.is_dir())
    files: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        names = sorted(f.name for f in os.scandir(root / split / name) if f.is_file())
        chosen = names[:per_class] if per_class > 0 else names
        files += [str(root / split / name / f) for f in chosen]
        labels += [index] * len(chosen)
    return files, np.array(labels, dtype=np.int64), classes


def write_record(out: Path, record: dict[str, object]) -> int:
    """Write a bench's JSON record, stamped with the machine and the time; exit status 0."""
    record = {**record, "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def default_prior() -> Any:
    """The `first:` prior of search_spaces/default.yaml (an autofit.search.space.First)."""
    from autofit.presets import preset
    from autofit.search.space import SearchSpace

    first = SearchSpace.load(preset("search_spaces", "default")).first
    if first is None:
        raise SystemExit("bench: search_spaces/default.yaml has no first: prior")
    return first


def cpu_prior(data_path: Path, threads: int = 2) -> tuple[Any, Any, Any]:
    """What the speed scripts time: `data_path` loaded on the CPU (torch at `threads`), the
    default space's prior and its recipe."""
    import torch

    from autofit.config import Recipe
    from autofit.data import pipeline
    from autofit.data.dataset import load

    torch.set_num_threads(threads)
    data = load(str(data_path), 0, threads, path=pipeline.choose("cpu"))
    first = default_prior()
    return data, first, Recipe.model_validate(first.training)


def prior_model(data: Any, first: Any, width: int, recipe: Any, seed: int,
                threads: int, arch: dict[str, int] | None = None) -> tuple[Any, Any]:
    """The prior's model at `width` (its other knobs changed by `arch`) with `recipe`, its
    weights seeded by `seed`, on the CPU, and its training loader over `data` (an autofit
    Dataset)."""
    import torch

    from autofit import models
    from autofit.config import TrialConfig
    from autofit.data import pipeline
    from autofit.train.loop import make_model

    arch = {**first.arch, **(arch or {}), "width": width}
    config = TrialConfig(family=first.family, arch=arch, recipe=recipe,
                         params=models.count_for(first.family, arch, data.shape))
    torch.manual_seed(seed)
    model = make_model(config, data.shape, *data.mean_std)
    loader = pipeline.training_loader(data.data_path, data.x_train, data.y_train, recipe,
                                      seed=seed, threads=threads, device="cpu")
    return model, loader
