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
#   4. when TensorRT's Python package is importable: builds the plan of the shipped tiny checkpoint
#      and checks TensorRT's greedy tokens against the CPU engine's and ONNX Runtime's
#      (tests/gpu/trt_check.py: every policy, fused and separate commit, prefill from past 0, past
#      buckets A -> B -> A with CUDA graphs on and off), recording the plan's build time and peaks;
#   5. writes OUT/gpu-check.json (GPU, driver, CUDA, pass/fail per test, timings, the TensorRT check)
#      and prints a table.
#
# The GPU and its architecture come from the CUDA driver through the build's own probe
# (cmake/cuda_driver_probe.cpp), not nvidia-smi, which JetPack does not ship: the same on Orin and H100.
#
#   tests/gpu/check.sh [OUT] [ARTIFACT]          OUT defaults to build/gpu-check
#
# On a machine without a GPU (or without a C++ compiler for the probe) it says so in one line and
# exits 0. Nothing is downloaded: the Python
# packages the tests use (torch with CUDA, onnxruntime, onnx, safetensors, tokenizers, jinja2, rich,
# psutil, pytest, pybind11) must already be installed for the python3 on PATH (or $PYTHON).
# Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/build/gpu-check}" && cd "${1:-$ROOT/build/gpu-check}" && pwd)
ARTIFACT=${2:-}
PYTHON=${PYTHON:-python3}

PROBE=$OUT/cuda_driver_probe
if ! "${CXX:-c++}" -std=c++17 -O1 -o "$PROBE" "$ROOT/cmake/cuda_driver_probe.cpp" -ldl >"$OUT/probe.log" 2>&1; then
  echo "GPU check: the CUDA driver probe does not compile here (a C++ compiler is needed; $OUT/probe.log); nothing to check."
  exit 0
fi
if ! GPU_LINE=$("$PROBE" --describe); then
  echo "GPU check: no NVIDIA GPU on this machine ($GPU_LINE); nothing to check."
  exit 0
fi
printf '%s\n' "$GPU_LINE" >"$OUT/gpu.tsv"   # name, compute capability, integrated, driver CUDA (summary.py)
IFS=$'\t' read -r GPU_NAME CC _ _ <<<"$GPU_LINE"
ARCH=${CC//./}
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

echo "GPU check: $GPU_NAME, compute capability $CC; output in $OUT"
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
  # 4. TensorRT: a plan of the shipped checkpoint, its tokens against the CPU engine's and ONNX Runtime's.
  if "$PYTHON" -c "import tensorrt" >/dev/null 2>&1; then
    rm -f "$OUT/trt-check.json"
    (cd "$ROOT" && step trt trt.log "$PYTHON" tests/gpu/trt_check.py "$OUT")
  else
    echo "== trt: TensorRT's Python package is not importable here; the TensorRT check is skipped"
  fi
fi
# 5. Summary (also when a step failed: it says which).
"$PYTHON" "$ROOT/tests/gpu/summary.py" "$OUT"
