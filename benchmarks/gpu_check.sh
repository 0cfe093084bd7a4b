#!/usr/bin/env bash
# Every CUDA figure docs/benchmarks.md leaves open, in under 8 minutes on one GPU, as one JSON file.
#
#   bash benchmarks/gpu_check.sh                    # CUDA machine: the full check; without CUDA: exit 2
#   bash benchmarks/gpu_check.sh --smoke            # any machine: every item at tiny sizes (CPU: ~2 min)
#   bash benchmarks/gpu_check.sh --out /tmp/g.json  # other options: python benchmarks/gpu_check.py --help
#
# Writes gpu_check.json (under $OUT when $OUT is set) and gpu_check.log beside it. Python: $PYTHON, else the
# project's .venv, else a python3 that has torch (a GPU image's), else the Makefile's .venv is built.
# Packages that python lacks (the pipeline's monai, pydicom, pydantic, ... on a bare GPU image) can come as
# wheels in .whl/ (or $GPU_CHECK_WHEELS): they are installed into a scratch folder first; without them the
# items that need them report "skipped" and the others run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

has_torch() { [ -x "$(command -v "$1" 2>/dev/null || true)" ] && "$1" -c 'import torch' >/dev/null 2>&1; }

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif has_torch .venv/bin/python; then
  PY=.venv/bin/python
elif has_torch python3; then
  PY=python3
else
  make .venv/.installed
  PY=.venv/bin/python
fi

WHEELS=${GPU_CHECK_WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE=/tmp/gpu_check_site
  rm -rf "$SITE"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: the wheels in $WHEELS did not install: the items that need them will say so" >&2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

for arg in "$@"; do
  if [ "$arg" = --smoke ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
done
exec "$PY" benchmarks/gpu_check.py "$@"
