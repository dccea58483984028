// NEON microkernels of the GEMM (gemm_kernels.h), AArch64 (where NEON is mandatory).
//
// A tile of 6 rows of x against 16 output columns: 24 accumulators (6 rows x 4 vectors of 4),
// the four weight vectors and the row's x broadcast take 29 of the 32 vector registers. Each
// vfmaq_n_f32 is one fused multiply-add, in k order: the chain of the other microkernels.
#include <arm_neon.h>

#include "gemm_kernels.h"
#include "kernels.h"

namespace sdar::cpu {
namespace {

constexpr int kRows = 6;
constexpr int kCols = 2 * kPanel;

void f32_tile(const float* x, const float* w, long panel_stride, int depth, float* y, int ldy, int rows, int cols,
              bool accumulate) {
  float32x4_t acc[kRows][4];
  const bool full = rows == kRows && cols == kCols;
  // Partial tiles (the last rows of x, the last panel of W) go through a zero-padded copy of their outputs.
  float edge[kRows][kCols] = {};
  if (!full && accumulate) {
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) edge[r][c] = y[static_cast<long>(r) * ldy + c];
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < 4; ++v) {
      if (!accumulate) {
        acc[r][v] = vdupq_n_f32(0.0f);
      } else if (full) {
        acc[r][v] = vld1q_f32(y + static_cast<long>(r) * ldy + 4 * v);
      } else {
        acc[r][v] = vld1q_f32(&edge[r][4 * v]);
      }
    }
  }
  const float* wa = w;
  const float* wsecond = cols > kPanel ? w + panel_stride : w;  // one panel: the second half is computed and dropped
  for (int k = 0; k < depth; ++k) {
    const float32x4_t w0 = vld1q_f32(wa + k * kPanel);
    const float32x4_t w1 = vld1q_f32(wa + k * kPanel + 4);
    const float32x4_t w2 = vld1q_f32(wsecond + k * kPanel);
    const float32x4_t w3 = vld1q_f32(wsecond + k * kPanel + 4);
    for (int r = 0; r < kRows; ++r) {
      const float xv = x[k * kRows + r];
      acc[r][0] = vfmaq_n_f32(acc[r][0], w0, xv);
      acc[r][1] = vfmaq_n_f32(acc[r][1], w1, xv);
      acc[r][2] = vfmaq_n_f32(acc[r][2], w2, xv);
      acc[r][3] = vfmaq_n_f32(acc[r][3], w3, xv);
    }
  }
  if (full) {
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < 4; ++v) vst1q_f32(y + static_cast<long>(r) * ldy + 4 * v, acc[r][v]);
    }
    return;
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < 4; ++v) vst1q_f32(&edge[r][4 * v], acc[r][v]);
  }
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) y[static_cast<long>(r) * ldy + c] = edge[r][c];
  }
}

}  // namespace

const GemmKernels* neon_gemm() {
  static const GemmKernels kernels{"neon", kRows, 2, f32_tile};
  return &kernels;
}

}  // namespace sdar::cpu
