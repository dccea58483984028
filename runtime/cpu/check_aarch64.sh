#!/usr/bin/env bash
# Builds the CPU kernels' test for AArch64 (the NEON kernels: the Jetson's CPU) with a cross
# compiler and runs it under qemu when qemu-aarch64 is installed:
#   runtime/cpu/check_aarch64.sh            # Debian/Ubuntu: apt install g++-aarch64-linux-gnu qemu-user
# Exit status 0 with a "skip" line when the cross compiler is missing.
set -euo pipefail
CXX=${CXX_AARCH64:-aarch64-linux-gnu-g++}
if ! command -v "$CXX" >/dev/null; then
  echo "skip: $CXX not found (apt install g++-aarch64-linux-gnu)"
  exit 0
fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$CXX" -std=c++17 -O2 -Wall -Wextra -Werror -static -DSDAR_CPU_HAVE_NEON=1 -I"$ROOT/runtime" -I"$ROOT/runtime/cpu" \
  "$ROOT"/runtime/cpu/{cpu_engine,cpu_features,cpu_model,gemm,gemm_scalar,gemm_neon,kernels_scalar,kernels_neon,mapped_file,matmul,packed_matrix,thread_pool,transformer_ops}.cpp \
  "$ROOT"/runtime/{engine,model_spec}.cpp \
  "$ROOT/runtime/tests/test_cpu_kernels.cpp" -o "$OUT/test_cpu_kernels" -lpthread
echo "ok  AArch64 build of the CPU engine and its kernels (NEON)"
if command -v qemu-aarch64 >/dev/null; then
  qemu-aarch64 "$OUT/test_cpu_kernels"
else
  echo "skip running it: qemu-aarch64 not found (apt install qemu-user)"
fi
