// The large-M path of the CPU engine's matmul: y[M, N] = x[M, K] W^T as a blocked GEMM, for the
// row counts of a prompt's prefill (hundreds of rows per call; kernels.h covers the few rows of a
// decoding step).
//
// The small-M kernels stream each weight panel once per call and run every tile of x against it,
// so at M = 256 the panel (8 KB per 256 values of K) comes from L2 for each of 64 tiles and the
// tiles from L3. Here x is packed once per call into tiles of `tile_rows` rows, k-major, in blocks
// of kGemmDepth values of K; a block of a group of tiles (at most kGemmGroupRows rows: 256 KB)
// stays in L2, and the block's slice of a strip of `tile_panels` weight panels (16 output columns,
// 16 KB, for AVX2 and NEON; 32 columns, 32 KB, for AVX-512) stays in L1 while every tile of the
// group runs against it. The microkernel keeps tile_rows x (8 * tile_panels) outputs in registers
// for the whole depth of the block.
//
// Float32 weights only: each output is one chain of fused multiply-adds over k in order, from
// zero (between blocks the partial sum waits in y, unchanged). That is the chain of the scalar
// table and of the vector tables' tiles of 4 rows, so a row gets the same bits from the GEMM as
// from the small-M path: the prefill and the decoding steps stay consistent whatever path each takes.
// The microkernels: gemm_kernels.h.
#pragma once

#include <vector>

#include "gemm_kernels.h"
#include "kernels.h"
#include "thread_pool.h"

namespace sdar::cpu {

// The microkernels that go with a kernel table: its instruction set's, else the portable ones.
const GemmKernels& gemm_kernels_for(const KernelTable& table);

// From how many rows of x a float32 matmul takes the GEMM (and a quantized one a table's strips
// kernel, kernels.h): SDAR_CPU_GEMM_MIN_ROWS when set (0: never, which keeps the small-M kernels for
// every M), else kGemmDefaultMinRows. Throws InvalidArgument on a value that is not a non-negative
// integer.
constexpr int kGemmDefaultMinRows = 32;
int gemm_min_rows_from_environment();

// The driver: packs x into its workspace and runs the microkernels over the pool.
class Gemm {
 public:
  explicit Gemm(const GemmKernels& kernels) : kernels_(kernels) {}

  // Sizes the packed copy of x for up to max_rows x max_cols; the only allocation.
  void reserve(int max_rows, int max_cols);

  // y[rows][ldy] (columns [0, w.rows)) = x[rows][ldx] (w.cols values) times W^T, W float32;
  // rows and w.cols within the reserved size (Matmul checks).
  void f32(ThreadPool& pool, const PackedMatrix& w, const float* x, int rows, int ldx, float* y, int ldy);

  const GemmKernels& kernels() const { return kernels_; }

 private:
  const GemmKernels& kernels_;
  std::vector<float> packed_;
};

}  // namespace sdar::cpu
