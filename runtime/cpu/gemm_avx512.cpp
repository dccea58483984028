// AVX-512 microkernels of the GEMM (gemm_kernels.h), compiled with -mavx512f -mavx2 -mfma and used
// only with the AVX-512 VNNI table, whose CPU check includes AVX-512 F: nothing here needs more (no
// DQ, BW or VL instruction).
//
// A tile of 12 rows of x against 32 output columns (four 8-row panels): 24 accumulators of 16
// floats and two weight vectors take 26 of the 32 vector registers; x is broadcast from memory
// inside each multiply-add. Per k: two weight vectors, each the 8 floats of two panels (a 256-bit
// load and a 256-bit insert), twelve broadcasts and 24 multiply-adds, so 16 loads feed 24 fused
// multiply-adds of 16 lanes, where the AVX2 tile (6 x 16) needs 8 loads for 12 of 8 lanes. 12 x 32
// ran as fast as 14 x 32 (which pads 256 rows to 266, not 264) and ahead of 16 x 16 and 24 x 16 (one
// weight vector, more broadcasts per multiply-add): docs/cpu-prefill.md. Each lane is one output and one chain of fused
// multiply-adds over k in order: the bits of the other microkernels.
#include <immintrin.h>

#include "gemm_kernels.h"
#include "kernels.h"

namespace sdar::cpu {
namespace {

constexpr int kRows = 12;
constexpr int kPanels = 4;

// The 16 weights of output columns [8a, 8a + 16) at k: panel a's 8 and the next panel's 8.
// _mm512_insertf32x8 would need AVX-512 DQ; the 64-bit insert of the same bits is in F. (Its masked
// form with every lane set is the same instruction; the plain form's undefined source makes GCC 12
// warn of an uninitialized value.)
inline __m512 weights16(const float* first, const float* second) {
  const __m512d low = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(first)));
  const __m256d high = _mm256_castps_pd(_mm256_loadu_ps(second));
  return _mm512_castpd_ps(_mm512_mask_insertf64x4(low, 0xff, low, high, 1));
}

// The tile against V vectors of 16 columns (V = 2: panels p0..p3; V = 1: p0, p1 only). A panel past
// the last column is read again from one that exists (p1 = p0, p3 = p2) and its outputs dropped by
// the store masks, so the loop has no branches. The accumulators are locals of this one function,
// fully unrolled, so they live in registers for the whole loop. Rows past `rows` are zero in x:
// computed, never loaded or stored.
template <int V>
void f32_run(const float* x, const float* p0, const float* p1, const float* p2, const float* p3, int depth, float* y,
             long ldy, int rows, const __mmask16 (&mask)[2], bool accumulate) {
  __m512 acc[kRows][V];
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      acc[r][v] = accumulate && r < rows ? _mm512_maskz_loadu_ps(mask[v], y + r * ldy + 16 * v) : _mm512_setzero_ps();
    }
  }
  for (int k = 0; k < depth; ++k) {
    const float* xk = x + k * kRows;
    const __m512 w0 = weights16(p0 + k * kPanel, p1 + k * kPanel);
    const __m512 w1 = V == 2 ? weights16(p2 + k * kPanel, p3 + k * kPanel) : w0;
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const __m512 xv = _mm512_set1_ps(xk[r]);
      acc[r][0] = _mm512_fmadd_ps(w0, xv, acc[r][0]);
      if constexpr (V == 2) acc[r][1] = _mm512_fmadd_ps(w1, xv, acc[r][1]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
    if (r >= rows) break;
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(y + r * ldy + 16 * v, mask[v], acc[r][v]);
  }
}

// Partial tiles need no copy: masked loads and stores touch only the outputs that exist.
void f32_tile(const float* x, const float* w, long panel_stride, int depth, float* y, int ldy, int rows, int cols,
              bool accumulate) {
  const int panels = (cols + kPanel - 1) / kPanel;
  const float* p0 = w;
  const float* p1 = panels > 1 ? w + panel_stride : p0;
  const float* p2 = panels > 2 ? w + 2 * panel_stride : p1;
  const float* p3 = panels > 3 ? w + 3 * panel_stride : p2;
  const auto columns = [](int n) { return static_cast<__mmask16>(n >= 16 ? 0xffff : n <= 0 ? 0 : (1u << n) - 1); };
  const __mmask16 mask[2] = {columns(cols), columns(cols - 16)};
  if (panels > 2) {
    f32_run<2>(x, p0, p1, p2, p3, depth, y, ldy, rows, mask, accumulate);
  } else {
    f32_run<1>(x, p0, p1, p2, p3, depth, y, ldy, rows, mask, accumulate);
  }
}

}  // namespace

const GemmKernels* avx512_gemm() {
  static const GemmKernels kernels{"avx512", kRows, kPanels, f32_tile};
  return &kernels;
}

}  // namespace sdar::cpu
