#!/usr/bin/env bash
# Syntax-checks the TensorRT backend against one TensorRT header set (no TensorRT library or GPU
# needed): runtime/trt/compile_check.sh /path/to/TensorRT/include [CUDA_INCLUDE_DIR]
# TensorRT and CUDA headers are -isystem: their own deprecation warnings are not ours.
# Used to keep runtime/trt compiling for JetPack 6 (TensorRT 10.3) and current TensorRT (11.x); CI
# runs it against the headers of a package index (.ci/run). Nothing in runtime/ includes from csrc/.
set -euo pipefail
TRT_INCLUDE=${1:?usage: compile_check.sh TENSORRT_INCLUDE_DIR [CUDA_INCLUDE_DIR]}
CUDA_INCLUDE=${2:-}
if [[ -z "$CUDA_INCLUDE" ]]; then
  NVCC=$(command -v nvcc || true)
  if [[ -n "$NVCC" ]]; then
    CUDA_INCLUDE=$(dirname "$(readlink -f "$NVCC")")/../include
    # /usr/local/bin/nvcc may be a wrapper script: fall back to the usual toolkit locations.
    [[ -f "$CUDA_INCLUDE/cuda_runtime_api.h" ]] || CUDA_INCLUDE=
  fi
  for candidate in /usr/local/cuda/include /usr/local/cuda-*/include; do
    [[ -z "$CUDA_INCLUDE" && -f "$candidate/cuda_runtime_api.h" ]] && CUDA_INCLUDE=$candidate
  done
fi
[[ -f "$CUDA_INCLUDE/cuda_runtime_api.h" ]] || { echo "CUDA headers not found; pass CUDA_INCLUDE_DIR" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=$(grep -hE '#define (NV_TENSORRT|TRT)_(MAJOR|MINOR|PATCH)(_ENTERPRISE)? ' "$TRT_INCLUDE/NvInferVersion.h" |
          awk '$3 ~ /^[0-9]+$/ {print $3}' | head -3 | paste -sd.)
echo "TensorRT headers $VERSION at $TRT_INCLUDE; CUDA headers at $CUDA_INCLUDE"
for source in "$ROOT"/runtime/trt/*.cpp; do
  g++ -std=c++17 -Wall -Wextra -Werror -fsyntax-only -isystem "$TRT_INCLUDE" -isystem "$CUDA_INCLUDE" -I"$ROOT/runtime" \
      "$source"
  echo "ok  $(basename "$source")"
done
# The Python bindings with the CUDA and TensorRT parts switched on (needs pybind11 installed).
if PYBIND_FLAGS=$(python3 -m pybind11 --includes 2>/dev/null); then
  # shellcheck disable=SC2086
  g++ -std=c++17 -Wall -Wextra -Werror -fsyntax-only -isystem "$TRT_INCLUDE" -isystem "$CUDA_INCLUDE" $PYBIND_FLAGS \
      -I"$ROOT/runtime" -DSDAR_HAVE_CUDA=1 -DSDAR_HAVE_TENSORRT=1 "$ROOT/csrc/bindings.cpp"
  echo "ok  bindings.cpp (CUDA + TensorRT)"
else
  echo "skip bindings.cpp: pybind11 is not installed"
fi
