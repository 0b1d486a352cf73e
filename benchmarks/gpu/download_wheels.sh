#!/usr/bin/env bash
# On a machine with a package registry: download, as CPython 3.12 manylinux x86-64 wheels, everything
# benchmarks.gpu_suite needs beyond what the GPU machine has (benchmarks/gpu/wheels.txt), into one folder
# (default benchmarks/gpu/wheels/, git-ignored; files already there are kept, so re-runs are quick).
#
#   benchmarks/gpu/download_wheels.sh [DEST]        then: python benchmarks/gpu/check_wheels.py [DEST]
#
# --no-deps: wheels.txt names every runtime dependency itself (the GPU machine's own packages must not be
# replaced, so pip may not resolve). antlr4-python3-runtime 4.9.3 exists only as an sdist: its pure-Python
# wheel is built here.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST="${1:-benchmarks/gpu/wheels}"
PY="${PYTHON:-python3}"
LIST=benchmarks/gpu/wheels.txt
mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
SDIST_ONLY="antlr4-python3-runtime"
binary_reqs=$(grep -v '^\s*#' "$LIST" | sed 's/#.*//; s/[[:space:]]//g' | grep -v '^$' | grep -v "^${SDIST_ONLY}==" || true)
sdist_reqs=$(grep -v '^\s*#' "$LIST" | sed 's/#.*//; s/[[:space:]]//g' | grep "^${SDIST_ONLY}==" || true)
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp "${platforms[@]}" -d "$DEST" $binary_reqs 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
for req in $sdist_reqs; do
  name="${req%%==*}"; version="${req##*==}"
  if ! ls "$DEST"/"${name//-/_}"-"$version"-*.whl >/dev/null 2>&1; then
    "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-binary=:all: -w "$DEST" "$req" 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  fi
done
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
