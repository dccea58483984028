// AVX2 + FMA microkernels of the GEMM (gemm_kernels.h), compiled with -mavx2 -mfma and used only
// when the CPU reports both.
//
// A tile of 6 rows of x against 16 output columns: 12 accumulators, the two columns' weights and
// one broadcast of x fill 15 of the 16 vector registers. Per k: two loads of weights (L1), six
// broadcasts of x (the packed tile, read front to back) and twelve multiply-adds.
#include <immintrin.h>

#include "gemm_kernels.h"
#include "kernels.h"

namespace sdar::cpu {
namespace {

constexpr int kRows = 6;

// y[r][0..15] (= or +=) x[k][r] * (wa[k], wb[k]) over k < depth, in order, for the 6 rows of a
// full tile (TWO: both panels; else wa only, y[r][0..7]). The accumulators are locals of this one
// function, so they live in registers for the whole loop.
template <bool TWO>
inline void f32_full(const float* x, const float* wa, const float* wb, int depth, float* y, long ldy, bool accumulate) {
  __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0;
  __m256 a3 = a0, b3 = a0, a4 = a0, b4 = a0, a5 = a0, b5 = a0;
  if (accumulate) {
    a0 = _mm256_loadu_ps(y + 0 * ldy), a1 = _mm256_loadu_ps(y + 1 * ldy), a2 = _mm256_loadu_ps(y + 2 * ldy);
    a3 = _mm256_loadu_ps(y + 3 * ldy), a4 = _mm256_loadu_ps(y + 4 * ldy), a5 = _mm256_loadu_ps(y + 5 * ldy);
    if (TWO) {
      b0 = _mm256_loadu_ps(y + 0 * ldy + kPanel), b1 = _mm256_loadu_ps(y + 1 * ldy + kPanel);
      b2 = _mm256_loadu_ps(y + 2 * ldy + kPanel), b3 = _mm256_loadu_ps(y + 3 * ldy + kPanel);
      b4 = _mm256_loadu_ps(y + 4 * ldy + kPanel), b5 = _mm256_loadu_ps(y + 5 * ldy + kPanel);
    }
  }
  for (int k = 0; k < depth; ++k) {
    const float* xk = x + k * kRows;
    const __m256 w0 = _mm256_loadu_ps(wa + k * kPanel);
    if (TWO) {
      const __m256 w1 = _mm256_loadu_ps(wb + k * kPanel);
      __m256 xv = _mm256_broadcast_ss(xk + 0);
      a0 = _mm256_fmadd_ps(w0, xv, a0), b0 = _mm256_fmadd_ps(w1, xv, b0);
      xv = _mm256_broadcast_ss(xk + 1);
      a1 = _mm256_fmadd_ps(w0, xv, a1), b1 = _mm256_fmadd_ps(w1, xv, b1);
      xv = _mm256_broadcast_ss(xk + 2);
      a2 = _mm256_fmadd_ps(w0, xv, a2), b2 = _mm256_fmadd_ps(w1, xv, b2);
      xv = _mm256_broadcast_ss(xk + 3);
      a3 = _mm256_fmadd_ps(w0, xv, a3), b3 = _mm256_fmadd_ps(w1, xv, b3);
      xv = _mm256_broadcast_ss(xk + 4);
      a4 = _mm256_fmadd_ps(w0, xv, a4), b4 = _mm256_fmadd_ps(w1, xv, b4);
      xv = _mm256_broadcast_ss(xk + 5);
      a5 = _mm256_fmadd_ps(w0, xv, a5), b5 = _mm256_fmadd_ps(w1, xv, b5);
    } else {
      a0 = _mm256_fmadd_ps(w0, _mm256_broadcast_ss(xk + 0), a0);
      a1 = _mm256_fmadd_ps(w0, _mm256_broadcast_ss(xk + 1), a1);
      a2 = _mm256_fmadd_ps(w0, _mm256_broadcast_ss(xk + 2), a2);
      a3 = _mm256_fmadd_ps(w0, _mm256_broadcast_ss(xk + 3), a3);
      a4 = _mm256_fmadd_ps(w0, _mm256_broadcast_ss(xk + 4), a4);
      a5 = _mm256_fmadd_ps(w0, _mm256_broadcast_ss(xk + 5), a5);
    }
  }
  _mm256_storeu_ps(y + 0 * ldy, a0), _mm256_storeu_ps(y + 1 * ldy, a1), _mm256_storeu_ps(y + 2 * ldy, a2);
  _mm256_storeu_ps(y + 3 * ldy, a3), _mm256_storeu_ps(y + 4 * ldy, a4), _mm256_storeu_ps(y + 5 * ldy, a5);
  if (TWO) {
    _mm256_storeu_ps(y + 0 * ldy + kPanel, b0), _mm256_storeu_ps(y + 1 * ldy + kPanel, b1);
    _mm256_storeu_ps(y + 2 * ldy + kPanel, b2), _mm256_storeu_ps(y + 3 * ldy + kPanel, b3);
    _mm256_storeu_ps(y + 4 * ldy + kPanel, b4), _mm256_storeu_ps(y + 5 * ldy + kPanel, b5);
  }
}

void f32_tile(const float* x, const float* w, long panel_stride, int depth, float* y, int ldy, int rows, int cols,
              bool accumulate) {
  const float* wa = w;
  const float* wb = cols > kPanel ? w + panel_stride : nullptr;
  if (rows == kRows && cols == 2 * kPanel) {
    f32_full<true>(x, wa, wb, depth, y, ldy, accumulate);
    return;
  }
  // Partial tiles (the last rows of x, the last panel of W) run on a zero-padded copy of their outputs.
  alignas(32) float edge[kRows][2 * kPanel] = {};
  if (accumulate) {
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) edge[r][c] = y[static_cast<long>(r) * ldy + c];
    }
  }
  if (wb != nullptr) {
    f32_full<true>(x, wa, wb, depth, &edge[0][0], 2 * kPanel, accumulate);
  } else {
    f32_full<false>(x, wa, wb, depth, &edge[0][0], 2 * kPanel, accumulate);
  }
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) y[static_cast<long>(r) * ldy + c] = edge[r][c];
  }
}

}  // namespace

const GemmKernels* avx2_gemm() {
  static const GemmKernels kernels{"avx2", kRows, 2, f32_tile};
  return &kernels;
}

}  // namespace sdar::cpu
