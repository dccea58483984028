// The microkernels of the CPU engine's GEMM (gemm.h), one set per instruction set. Like the
// kernel tables, each set is compiled in its own source with that set's flags, and those sources
// include nothing but this header, kernels.h and the intrinsics headers.
#pragma once

namespace sdar::cpu {

// Values of K per packed block: a tile of 12 rows is 12 KB and a 32-column slice of W 32 KB (the
// AVX-512 tile, L1 of 48 KB), a tile of 6 rows 6 KB and a 16-column slice 16 KB (AVX2, L1 of 32 KB).
constexpr int kGemmDepth = 256;
// Rows of x per block group: 256 rows x kGemmDepth floats = 256 KB (L2).
constexpr int kGemmGroupRows = 256;

// One instruction set's GEMM microkernels.
struct GemmKernels {
  const char* name;
  int tile_rows;    // rows of x per microkernel call (the packed tile height)
  int tile_panels;  // 8-row weight panels per call: tile_panels * 8 output columns
  // y[r][c] = (accumulate ? y[r][c] : 0) + sum over k < depth of x[k * tile_rows + r] * w(k, c),
  // for r < rows (<= tile_rows) and c < cols (<= tile_panels * 8); w(k, c) is
  // w[(c / 8) * panel_stride + k * 8 + c % 8]: the depth-slices of the ceil(cols / 8) consecutive
  // 8-row panels that hold those columns (packed_matrix.h), panel_stride floats apart; no other
  // panel is read. Each output is one chain of fused multiply-adds over k in order. Rows of the tile
  // past `rows` are zero in x and never stored.
  void (*f32_tile)(const float* x, const float* w, long panel_stride, int depth, float* y, int ldy, int rows, int cols,
                   bool accumulate);
};

// Portable C++ (every build); nullptr when the build has no such microkernels.
const GemmKernels& scalar_gemm();
const GemmKernels* avx2_gemm();
const GemmKernels* avx512_gemm();
const GemmKernels* neon_gemm();

}  // namespace sdar::cpu
