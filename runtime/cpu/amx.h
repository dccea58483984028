// The AMX path of the CPU engine's quantized matmuls: int4 / int8 weights times the int8
// activations of many rows (a prompt's prefill) on Intel's AMX-INT8 tiles (Sapphire Rapids and
// later Xeons), with the same results bit for bit as every kernel table (the kernel and why:
// quantized_amx.cpp). Used only with the avx512vnni table (every AMX CPU has AVX-512 VNNI, and the
// kernel reads that table's layout of the activations); a decoding step of a few rows keeps the
// small-M kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include "amx_kernels.h"
#include "kernels.h"
#include "thread_pool.h"
#include "thread_scratch.h"

namespace sdar::cpu {

// Whether this build has the AMX kernel and this process may run it: the CPU reports AMX-TILE and
// AMX-INT8 (CPUID leaf 7: EDX bits 24 and 25), the OS saves the tile state (XCR0 bits 17 and 18),
// and on Linux the kernel grants the process the tile data state (arch_prctl
// ARCH_REQ_XCOMP_PERM, asked once per process). Any of them missing: false, and quantized matmuls
// keep the kernel tables' paths.
bool amx_usable();

// SDAR_CPU_AMX: unset, empty or "1": the AMX path where amx_usable() (the default); "0": never (the
// kernel tables' paths at every row count). Throws InvalidArgument on any other value.
bool amx_enabled_from_environment();

// Quantized matmuls of at least this many rows take AMX: a decoding step of batch 1 or 2 (a block
// of 4-32 rows per batch row) keeps the small-M kernels, which stream the weights once and are
// faster at a few rows; from 32 rows on AMX was faster in every shape measured (docs/cpu-prefill.md).
constexpr int kAmxMinRows = 32;

// The driver: scratch per thread (allocated in reserve), tasks over the pool.
class AmxMatmul {
 public:
  explicit AmxMatmul(AmxQuantizedKernel kernel) : kernel_(kernel) {}

  // Sizes the scratch for up to max_rows rows of up to max_cols columns on a pool of `threads`; the
  // only allocation.
  void reserve(int max_rows, int max_cols, int threads);

  // y = x W^T for args (Q4 / Q8 weights, args.a quantized by the avx512vnni table with a
  // row_capacity that is a multiple of kAmxPassRows).
  void quantized(ThreadPool& pool, const MatmulArgs& args);

 private:
  AmxScratch scratch(const ThreadPool& pool);  // the calling thread's

  AmxQuantizedKernel kernel_;
  int max_rows_ = 0;
  int max_cols_ = 0;
  ThreadScratch scratch_;
};

}  // namespace sdar::cpu
