"""Benchmark: the mirror decision (autofit/data/mirror.py) on each dataset, as a run makes it.

    python bench/mirror.py                      # the embedded digits and ../shared/datasets
    python bench/mirror.py --data digits /path/to/folder --out /tmp/mirror.json

For each dataset: the linear probe's validation accuracy on the images and on their mirrors,
the share of its lead over chance the mirror keeps, what the run pins, and the seconds the
decision took (the data's loading apart). Writes bench/results/mirror.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_record  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
DEFAULT = ["digits", str(SHARED / "fashion-mnist.npz"), str(SHARED / "cifar10-jpg"),
           str(SHARED / "clothing-photos")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=DEFAULT,
                        help="datasets as `autofit run --data` takes them; digits: the embedded")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mirror.json")
    args = parser.parse_args()

    from autofit.data import mirror
    from autofit.data.dataset import load

    rows = []
    for source in args.data:
        start = time.perf_counter()
        dataset = load(None if source == "digits" else source, args.seed, 2)
        loaded = time.perf_counter()
        decision = mirror.decide(dataset, args.seed)
        rows.append({"data": source, "classes": len(dataset.classes),
                     "resolution": dataset.resolution._asdict(), **decision.measured,
                     "pinned": decision.pinned, "evidence": decision.evidence,
                     "load_s": round(loaded - start, 2),
                     "decide_s": round(time.perf_counter() - loaded, 3)})
        print(f"{Path(source).name:24s} kept {decision.measured['kept']:6.3f}  pinned "
              f"{decision.pinned or '-'}  ({rows[-1]['decide_s']:.2f}s)", flush=True)
    return write_record(args.out, {"bench": "mirror", "threshold": mirror.MIRROR_KEEPS,
                                   "seed": args.seed, "rows": rows})


if __name__ == "__main__":
    sys.exit(main())
