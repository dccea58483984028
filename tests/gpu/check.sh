#!/usr/bin/env bash
# GPU validation in one command, for a machine with an NVIDIA GPU:
#   1. builds sdar_rt's extension (C++ core, CUDA kernels) for this GPU's architecture only, in
#      OUT/build (reused when it is already there), and the C++ core's own tests;
#   2. runs the C++ tests and the GPU tests: the unmasking kernels against the CPU rules, and the
#      C++ core's device decoding loop (torch step engine) against the CPU path, on the shipped
#      checkpoint and on a random checkpoint with the released 151,936-token vocabulary;
#   3. times the unmasking kernel per step (L = 4 and 16, fp32 / fp16 / bf16 logits) and the host
#      time per denoising step of the device loop (and, with an artifact with TensorRT plans given
#      as ARTIFACT, the loop around TensorRT with CUDA graphs on and off);
#   4. writes OUT/gpu-check.json (GPU, driver, CUDA, pass/fail per test, timings) and prints a table.
#
#   tests/gpu/check.sh [OUT] [ARTIFACT]          OUT defaults to build/gpu-check
#
# On a machine without a GPU it says so in one line and exits 0. Nothing is downloaded: the Python
# packages the tests use (torch with CUDA, onnxruntime, onnx, safetensors, tokenizers, jinja2, rich,
# psutil, pytest, pybind11) must already be installed for the python3 on PATH (or $PYTHON).
# Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/build/gpu-check}" && cd "${1:-$ROOT/build/gpu-check}" && pwd)
ARTIFACT=${2:-}
PYTHON=${PYTHON:-python3}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "GPU check: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing to check."
  exit 0
fi

ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d ' .')
JOBS=$(nproc 2>/dev/null || echo 4)
STEPS=$OUT/steps.tsv  # one line per step: name, exit status, milliseconds
: >"$STEPS"
step() {  # step NAME LOG COMMAND...: runs COMMAND, logs to OUT/LOG, records status and time
  local name=$1 log=$2 start rc
  shift 2
  echo "== $name (log: $OUT/$log)"
  start=$(date +%s%N)
  "$@" >"$OUT/$log" 2>&1
  rc=$?
  printf '%s\t%d\t%d\n' "$name" "$rc" $((($(date +%s%N) - start) / 1000000)) >>"$STEPS"
  [[ $rc -eq 0 ]] || { echo "   failed (exit $rc); last lines:"; tail -n 15 "$OUT/$log" | sed 's/^/   /'; }
  return $rc
}

echo "GPU check: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1), compute capability $ARCH; output in $OUT"
# 1. Build for this GPU only (a carried or earlier OUT/build is reused: only what changed recompiles).
PYBIND11_DIR=$("$PYTHON" -m pybind11 --cmakedir 2>/dev/null)
build() {
  cmake -S "$ROOT" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DSDAR_WITH_CUDA=ON -DSDAR_BUILD_TESTS=ON \
        -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DPython_EXECUTABLE="$(command -v "$PYTHON")" \
        -Dpybind11_DIR="$PYBIND11_DIR" &&
  cmake --build "$OUT/build" -j "$JOBS" --target _core sdar_tests &&
  # The package as Python imports it: the sources plus the freshly built extension, outside the tree.
  rm -rf "$OUT/site" && mkdir -p "$OUT/site" && cp -r "$ROOT/python/sdar_rt" "$OUT/site/" &&
  cp "$OUT"/build/_core*.so "$OUT/site/sdar_rt/"
}
if step build build.log build; then
  export PYTHONPATH="$OUT/site:$ROOT/export${PYTHONPATH:+:$PYTHONPATH}"
  # 2. Tests.
  step ctest ctest.log ctest --test-dir "$OUT/build" --output-on-failure
  (cd "$ROOT" && step pytest pytest.log "$PYTHON" -m pytest -p no:cacheprovider -rs -q \
      --junitxml="$OUT/junit.xml" tests/test_gpu_kernels.py tests/test_torch_engine.py \
      tests/test_device_selection.py tests/test_gpu_large_vocab.py)
  # 3. Timings.
  (cd "$ROOT" && step timings timings.log "$PYTHON" tests/bench_gpu_unmask.py --json "$OUT/timings.json" \
      ${ARTIFACT:+--artifact "$ARTIFACT"})
fi
# 4. Summary (also when a step failed: it says which).
"$PYTHON" "$ROOT/tests/gpu/summary.py" "$OUT"
