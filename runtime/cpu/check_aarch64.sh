#!/usr/bin/env bash
# Builds the CPU kernels' and attention's tests for AArch64 with a cross compiler, as CMake builds the engine there
# (the portable sources and the NEON table for plain Armv8.0; the dot-product and i8mm tables each
# with its own -march), and runs it under qemu when qemu-aarch64 is installed, on emulated CPUs
# with and without the optional instructions:
#   runtime/cpu/check_aarch64.sh            # Debian/Ubuntu: apt install g++-aarch64-linux-gnu qemu-user
# Each run checks every table that CPU offers against the portable kernels, and that the tables
# detected are the expected ones (a table used on a CPU without its instructions would die of SIGILL
# instead). Exit status 0 with a "skip" line when the cross compiler is missing.
set -euo pipefail
CXX=${CXX_AARCH64:-aarch64-linux-gnu-g++}
if ! command -v "$CXX" >/dev/null; then
  echo "skip: $CXX not found (apt install g++-aarch64-linux-gnu)"
  exit 0
fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
FLAGS=(-std=c++17 -O2 -Wall -Wextra -Werror -I"$ROOT/runtime" -I"$ROOT/runtime/cpu")
# Two compilers at a time: the extension tables beside the rest.
("$CXX" "${FLAGS[@]}" -march=armv8.2-a+dotprod -c "$ROOT/runtime/cpu/kernels_dotprod.cpp" -o "$OUT/kernels_dotprod.o" &&
  "$CXX" "${FLAGS[@]}" -march=armv8.2-a+dotprod+i8mm -c "$ROOT/runtime/cpu/kernels_i8mm.cpp" -o "$OUT/kernels_i8mm.o") &
extensions=$!
(cd "$OUT" && "$CXX" "${FLAGS[@]}" -DSDAR_CPU_HAVE_NEON=1 -DSDAR_CPU_HAVE_DOTPROD=1 -DSDAR_CPU_HAVE_I8MM=1 -c \
  "$ROOT"/runtime/cpu/{amx,cpu_engine,cpu_features,cpu_model,gemm,gemm_scalar,gemm_neon,kernels_scalar,kernels_neon,mapped_file,matmul,packed_matrix,thread_pool,thread_scratch,transformer_ops}.cpp \
  "$ROOT"/runtime/{engine,model_spec}.cpp "$ROOT"/runtime/tests/test_cpu_{kernels,attention}.cpp)
wait "$extensions"
"$CXX" -static $(ls "$OUT"/*.o | grep -v test_cpu_attention.o) -o "$OUT/test_cpu_kernels" -lpthread
"$CXX" -static $(ls "$OUT"/*.o | grep -v test_cpu_kernels.o) -o "$OUT/test_cpu_attention" -lpthread
echo "ok  AArch64 build of the CPU engine and its kernels (NEON, dot-product, i8mm)"
if ! command -v qemu-aarch64 >/dev/null; then
  echo "skip running it: qemu-aarch64 not found (apt install qemu-user)"
  exit 0
fi
# qemu's CPU models: cortex-a57 (Armv8.0: neither extension), cortex-a76 (FEAT_DotProd; qemu 7.1 and
# later), max (both).
models=$(qemu-aarch64 -cpu help || true)  # lists the models, then exits with status 1
for cpu_tables in "cortex-a57:neon,scalar" "cortex-a76:dotprod,neon,scalar" "max:i8mm,dotprod,neon,scalar"; do
  cpu=${cpu_tables%%:*}
  if ! grep -qw -- "$cpu" <<<"$models"; then
    echo "skip -cpu $cpu: this qemu-aarch64 has no such CPU model (qemu 7.1 or later has it)"
    continue
  fi
  echo "qemu-aarch64 -cpu $cpu"
  SDAR_EXPECT_KERNELS=${cpu_tables#*:} qemu-aarch64 -cpu "$cpu" "$OUT/test_cpu_kernels"
  qemu-aarch64 -cpu "$cpu" "$OUT/test_cpu_attention"
done
