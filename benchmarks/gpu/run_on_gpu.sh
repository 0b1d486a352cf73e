#!/usr/bin/env bash
# On a GPU machine: install the wheel folder (download_wheels.sh, made on a connected machine) into a target
# directory with --no-deps, put it first on PYTHONPATH so our pins shadow the machine's own transformers /
# huggingface-hub / tokenizers / torchmetrics, keep the machine's CUDA torch, and run the suite.
#
#   benchmarks/gpu/run_on_gpu.sh OUT_DIR [gpu_suite options, e.g. --quick or --parts a,b]
#
# Env: WHEELS (default benchmarks/gpu/wheels; if absent, the Python's own packages are used, e.g. on a box
# where `pip install -r requirements/...` worked), TARGET (default /tmp/commoncanvas_site), PYTHON (python3).
# Writes OUT_DIR/gpu_suite.{json,md}, OUT_DIR/gpu_suite.log, and copies the tables to
# benchmarks/results/gpu_suite_<gpu-name>.{json,md} for committing.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: benchmarks/gpu/run_on_gpu.sh OUT_DIR [gpu_suite options]" >&2
  exit 2
fi
OUT_DIR="$1"; shift
WHEELS="${WHEELS:-benchmarks/gpu/wheels}"
TARGET="${TARGET:-/tmp/commoncanvas_site}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$TARGET" "$WHEELS"/*.whl
  export PYTHONPATH="$TARGET:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels into $TARGET (first on PYTHONPATH)"
else
  echo "no wheels in $WHEELS: using the packages $PY already has"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
"$PY" -m benchmarks.gpu_suite --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_suite.log"
status=${PIPESTATUS[0]}
set -e
if [ -f "$OUT_DIR/gpu_suite.json" ]; then
  slug=$("$PY" -c 'import json, re, sys; r = json.load(open(sys.argv[1]))
print(re.sub(r"[^a-z0-9]+", "_", (r["gpu_name"] or "cpu").lower()).strip("_") + ("_quick" if r["quick"] else ""))' \
    "$OUT_DIR/gpu_suite.json")
  mkdir -p benchmarks/results
  cp "$OUT_DIR/gpu_suite.json" "benchmarks/results/gpu_suite_$slug.json"
  cp "$OUT_DIR/gpu_suite.md" "benchmarks/results/gpu_suite_$slug.md"
  echo "tables copied to benchmarks/results/gpu_suite_$slug.{json,md}"
fi
exit "$status"
