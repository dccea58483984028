// The microkernels of the CPU engine's GEMM (gemm.h), one set per instruction set. Like the
// kernel tables, each set is compiled in its own source with that set's flags, and those sources
// include nothing but this header, kernels.h and the intrinsics headers.
#pragma once

namespace sdar::cpu {

// Values of K per packed block: a tile of 6 rows is 6 KB, a 16-column slice of W 16 KB (L1).
constexpr int kGemmDepth = 256;
// Rows of x per block group: 256 rows x kGemmDepth floats = 256 KB (L2).
constexpr int kGemmGroupRows = 256;

// One instruction set's GEMM microkernels.
struct GemmKernels {
  const char* name;
  int tile_rows;  // rows of x per microkernel call (the packed tile height)
  // y[r][c] = (accumulate ? y[r][c] : 0) + sum over k < depth of x[k * tile_rows + r] * w(k, c),
  // for r < rows (<= tile_rows) and c < cols (<= 16, or 8 when wb is null); w(k, c) is wa[k * 8 + c]
  // for c < 8, wb[k * 8 + c - 8] otherwise: the depth-slices of two 8-row panels (packed_matrix.h).
  // Each output is one chain of fused multiply-adds over k in order. Rows of the tile past `rows`
  // are zero in x and never stored.
  void (*f32_tile)(const float* x, const float* wa, const float* wb, int depth, float* y, int ldy, int rows, int cols,
                   bool accumulate);
};

// Portable C++ (every build); nullptr when the build has no such microkernels.
const GemmKernels& scalar_gemm();
const GemmKernels* avx2_gemm();
const GemmKernels* neon_gemm();

}  // namespace sdar::cpu
