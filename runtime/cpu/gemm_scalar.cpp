// Portable microkernels of the GEMM (gemm_kernels.h): what the scalar table and any CPU without its
// own microkernels run. The same chains of fused multiply-adds as the vector microkernels, so the
// results are the same bits.
#include <cmath>

#include "gemm_kernels.h"
#include "kernels.h"

namespace sdar::cpu {
namespace {

constexpr int kRows = 4;
constexpr int kCols = 2 * kPanel;

void f32_tile(const float* x, const float* w, long panel_stride, int depth, float* y, int ldy, int rows, int cols,
              bool accumulate) {
  float acc[kRows][kCols] = {};
  if (accumulate) {
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) acc[r][c] = y[static_cast<long>(r) * ldy + c];
    }
  }
  const int panels = (cols + kPanel - 1) / kPanel;
  for (int k = 0; k < depth; ++k) {
    for (int r = 0; r < kRows; ++r) {
      const float xv = x[k * kRows + r];
      for (int p = 0; p < panels; ++p) {
        const float* wk = w + p * panel_stride + k * kPanel;
        for (int c = 0; c < kPanel; ++c) acc[r][p * kPanel + c] = std::fma(wk[c], xv, acc[r][p * kPanel + c]);
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) y[static_cast<long>(r) * ldy + c] = acc[r][c];
  }
}

const GemmKernels kScalar{"scalar", kRows, kCols / kPanel, f32_tile};

}  // namespace

const GemmKernels& scalar_gemm() { return kScalar; }

}  // namespace sdar::cpu
