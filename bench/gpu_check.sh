#!/usr/bin/env bash
# The GPU check: autofit's GPU paths on a lent GPU machine (the `device` tool), in one run of at
# most 8 minutes, writing JSON. That machine has torch, onnx and onnxruntime but not Ray, DALI
# or pydantic; their wheels (about 280 MB, DALI alone 199 MB) are over the 64 MiB a device call
# carries, so they travel in parts first, each part in a call of its own while the machine is
# warm (it keeps /tmp between calls for 30 s of idle).
#
#   bash bench/gpu_check.sh prepare         # here: wheels and a CIFAR-10 slice, in parts
#   # then, on the device, once per part K (carry [".gpu/part-K"]; it prints the list):
#   bash bench/gpu_check.sh receive K
#   # and last (carry [".gpu/run"]), with timeout_s 540:
#   bash bench/gpu_check.sh run             # -> $OUT/gpu_check.json and the logs
#
# `run` checks, in order: the dali-gpu self-test (nvJPEG decode and GPU augmentation, as a run
# does at start-up), the data-pipeline benchmark on the GPU (decode and one augmented epoch),
# and a 2-minute autofit run on the CIFAR-10 slice (train 2,000 and test 200 images a class),
# timed from outside. Each step's result is recorded even when an earlier one failed.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=.gpu
PART_MB=58  # with the repository (about 2 MB) under the 64 MiB a call carries
TRAIN_PER_CLASS=2000
TEST_PER_CLASS=200

prepare() {
  local data=${1:-../shared/datasets/cifar10-jpg}
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
  rm -rf "$STAGE" && mkdir -p "$STAGE/wheels" "$STAGE/run"
  local py=${PYTHON:-.venv/bin/python}
  local pins=()
  # autofit's needs that the device image lacks (see its package list), with their own needs:
  # DALI decodes through nvimgcodec, Ray validates with jsonschema, the TPE searcher is optuna's.
  for name in nvidia-dali-cuda130 nvidia-nvimgcodec-cu13 nvidia-libnvcomp-cu13 astunparse gast \
      libcst makefun nvtx optree ray jsonschema jsonschema-specifications referencing rpds-py \
      pydantic pydantic-core annotated-types typing-inspection optuna alembic sqlalchemy \
      colorlog mako; do
    pins+=("$name==$("$py" -m pip show "$name" | awk '/^Version:/{print $2}')")
  done
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$STAGE/wheels" \
    "${pins[@]}" || return 1
  tar -C "$STAGE/wheels" -cf "$STAGE/wheels.tar" .
  rm -rf "$STAGE/wheels"
  (cd "$STAGE" && split -b "${PART_MB}m" -d -a 1 wheels.tar wheels.tar.) && rm "$STAGE/wheels.tar"
  local k=0
  for part in "$STAGE"/wheels.tar.*; do
    k=$((k + 1)); mkdir -p "$STAGE/part-$k"; mv "$part" "$STAGE/part-$k/"
  done
  # The data slice: the first files of each class, in the layout `autofit run --data` takes.
  (cd "$data" && find train -name '*.jpg' | sort | awk -F/ -v n=$TRAIN_PER_CLASS \
      '{c[$2]++; if (c[$2] <= n) print}' >/tmp/gpu_check.list &&
    find test -name '*.jpg' | sort | awk -F/ -v n=$TEST_PER_CLASS \
      '{c[$2]++; if (c[$2] <= n) print}' >>/tmp/gpu_check.list &&
    tar -cf - -T /tmp/gpu_check.list) >"$STAGE/run/cifar10-slice.tar"
  du -sh "$STAGE"/part-* "$STAGE/run"
  echo "device calls: for K in 1..$k: run(command='bash bench/gpu_check.sh receive K',"
  echo "  carry=['.gpu/part-K']); then run(command='bash bench/gpu_check.sh run',"
  echo "  carry=['.gpu/run'], timeout_s=540)"
}

receive() {
  mkdir -p /tmp/autofit-gpu && cp ".gpu/part-$1"/* /tmp/autofit-gpu/ && ls -la /tmp/autofit-gpu
}

install_wheels() {  # the wheels received in parts, and the CIFAR-10 slice
  (cd /tmp/autofit-gpu && cat wheels.tar.* | tar -xf -) || { echo "no wheels: receive the parts first"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site /tmp/autofit-gpu/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  mkdir -p /tmp/cifar && tar -C /tmp/cifar -xf .gpu/run/cifar10-slice.tar
}

step() {  # step NAME SECONDS COMMAND...: run it, keep its log and exit code in the results
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" >>"$OUT/steps.jsonl"
  echo "$name: exit $rc in $((SECONDS - start)) s"
  tail -n 5 "$OUT/$name.log"
}

run() {
  OUT=${OUT:-/tmp/gpu_check_out}; mkdir -p "$OUT"; : >"$OUT/steps.jsonl"
  export PYTHONUNBUFFERED=1
  install_wheels
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.csv"
  step self_test 120 python3 -c "
import json, torch
from autofit.data import pipeline
path = pipeline.choose('cuda')
print(json.dumps({'data_path': path.name, 'reason': path.reason,
                  'gpu': torch.cuda.get_device_name(0)}))
assert path.name == pipeline.DALI_GPU, path.reason"
  step data_pipeline 150 python3 bench/data_pipeline.py --data /tmp/cifar --threads 16 \
    --out "$OUT/data_pipeline.json"
  step cifar10_2min 200 python3 bench/cifar10.py --data /tmp/cifar --minutes 2 --max-params 2M \
    --out /tmp/gpu_check_run --results "$OUT/cifar10.jsonl"
  cp /tmp/gpu_check_run/summary.json "$OUT/summary.json" 2>/dev/null
  python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
report = {"gpu": (out / "gpu.csv").read_text().strip().splitlines()[-1], "steps": steps}
for name in ("data_pipeline.json", "summary.json"):
    if (out / name).is_file():
        report[name.removesuffix(".json")] = json.loads((out / name).read_text())
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps({"gpu": report["gpu"], "steps": steps}, indent=2))
PY
}

deploy() {  # issue 22's paths on the GPU: INT8 + a latency cap, and the pretrained family
  OUT=${OUT:-/tmp/gpu_check_out}; mkdir -p "$OUT"; : >"$OUT/steps.jsonl"
  export PYTHONUNBUFFERED=1
  install_wheels
  step deploy_2min 200 python3 -m autofit run --data /tmp/cifar --minutes 2 --max-params 2M \
    --quantize int8 --max-latency-ms 0.5 --seed 0 --out /tmp/gpu_deploy
  python3 -c "
import json; s = json.load(open('/tmp/gpu_deploy/summary.json'))
print(json.dumps({k: s.get(k) for k in ('test_accuracy', 'int8', 'latency', 'device', 'data_path')}))
" >"$OUT/deploy.json"
  step pretrained 260 python3 bench/pretrained.py transfer --seeds 0 --minutes 0.75 \
    --out "$OUT/pretrained.json"
  cat "$OUT/deploy.json" "$OUT/steps.jsonl"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  receive) receive "$2" ;;
  run) run ;;
  deploy) deploy ;;
  *) echo "usage: bash bench/gpu_check.sh prepare [CIFAR10_DIR] | receive K | run" >&2; exit 2 ;;
esac
