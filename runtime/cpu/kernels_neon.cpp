// NEON kernels (AArch64: the Jetson's CPU; NEON is part of every AArch64 CPU, so no runtime check).
// Same tiling idea as the AVX2 kernels in a simpler form: each weight row is decoded once per
// call and applied to up to 8 rows of x while it is in registers.
#include <arm_neon.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels.h"

namespace sdar::cpu {
namespace {

constexpr int kRowsPerPass = 8;

int row_end(const MatmulArgs& a, int panel_end) {
  const int end = panel_end * kPanel;
  return end < a.w.rows ? end : a.w.rows;
}

float weight_scale(const PackedMatrix& w, int n, int g) {
  return w.scales[(static_cast<std::size_t>(n / kPanel) * w.groups() + g) * kPanel + n % kPanel];
}

float zero_scale(const PackedMatrix& w, int n, int g) {
  if (w.symmetric) return weight_scale(w, n, g) * symmetric_zero_point(w.format);
  return w.zero_scales[(static_cast<std::size_t>(n / kPanel) * w.groups() + g) * kPanel + n % kPanel];
}

// Outer products over the k-major panel: for each k, the 8 weights of column k times x[m][k], into
// 8 outputs per row of x (two 4-lane vectors).
void f32_kernel(const MatmulArgs& a, int panel_begin, int panel_end) {
  const int K = a.w.cols;
  for (int p = panel_begin; p < panel_end; ++p) {
    const float* wp = static_cast<const float*>(a.w.data) + static_cast<std::size_t>(p) * K * kPanel;
    for (int m0 = 0; m0 < a.rows; m0 += kRowsPerPass) {
      const int mt = a.rows - m0 < kRowsPerPass ? a.rows - m0 : kRowsPerPass;
      float32x4_t lo[kRowsPerPass];
      float32x4_t hi[kRowsPerPass];
      for (int m = 0; m < kRowsPerPass; ++m) lo[m] = hi[m] = vdupq_n_f32(0.0f);
      for (int k = 0; k < K; ++k) {
        const float32x4_t w0 = vld1q_f32(wp + static_cast<std::size_t>(k) * kPanel);
        const float32x4_t w1 = vld1q_f32(wp + static_cast<std::size_t>(k) * kPanel + 4);
        for (int m = 0; m < mt; ++m) {
          const float xv = a.x[static_cast<std::size_t>(m0 + m) * a.ldx + k];
          lo[m] = vfmaq_n_f32(lo[m], w0, xv);
          hi[m] = vfmaq_n_f32(hi[m], w1, xv);
        }
      }
      const int n = a.w.rows - p * kPanel < kPanel ? a.w.rows - p * kPanel : kPanel;
      for (int m = 0; m < mt; ++m) {
        float out[8];
        vst1q_f32(out, lo[m]);
        vst1q_f32(out + 4, hi[m]);
        float* y = a.y + static_cast<std::size_t>(m0 + m) * a.ldy + p * kPanel;
        for (int j = 0; j < n; ++j) y[j] = out[j];
      }
    }
  }
}

// Dot of 32 codes (0..15 or 0..255 as u8, in order) with 32 signed activation codes.
inline int32x4_t dot32(uint8x16_t w_lo, uint8x16_t w_hi, const std::int8_t* x, int32x4_t acc) {
  const int8x16_t x0 = vld1q_s8(x);
  const int8x16_t x1 = vld1q_s8(x + 16);
  // u8 codes widened to int16 (exact for 0..255), times the int8 activations widened likewise.
  const int16x8_t w0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(w_lo)));
  const int16x8_t w1 = vreinterpretq_s16_u16(vmovl_high_u8(w_lo));
  const int16x8_t w2 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(w_hi)));
  const int16x8_t w3 = vreinterpretq_s16_u16(vmovl_high_u8(w_hi));
  acc = vmlal_s16(acc, vget_low_s16(w0), vget_low_s16(vmovl_s8(vget_low_s8(x0))));
  acc = vmlal_high_s16(acc, w0, vmovl_s8(vget_low_s8(x0)));
  acc = vmlal_s16(acc, vget_low_s16(w1), vget_low_s16(vmovl_high_s8(x0)));
  acc = vmlal_high_s16(acc, w1, vmovl_high_s8(x0));
  acc = vmlal_s16(acc, vget_low_s16(w2), vget_low_s16(vmovl_s8(vget_low_s8(x1))));
  acc = vmlal_high_s16(acc, w2, vmovl_s8(vget_low_s8(x1)));
  acc = vmlal_s16(acc, vget_low_s16(w3), vget_low_s16(vmovl_high_s8(x1)));
  acc = vmlal_high_s16(acc, w3, vmovl_high_s8(x1));
  return acc;
}

void quantized_kernel(const MatmulArgs& a, int panel_begin, int panel_end) {
  const PackedMatrix& w = a.w;
  const int K = w.cols;
  const int block = a.a.block;
  const int cap = a.a.row_capacity;
  const bool q4 = w.format == WeightFormat::Q4;
  // Units of 32 bytes per row (packed_matrix.h): 64 weights as nibbles (Q4) or 32 bytes (Q8).
  const std::size_t units = q4 ? (K + 2 * kChunk - 1) / (2 * kChunk) : K / kChunk;
  const uint8x16_t low4 = vdupq_n_u8(0x0F);
  for (int n = panel_begin * kPanel; n < row_end(a, panel_end); ++n) {
    // Row n's part of unit u: ((panel * units + u) * 8 + n % 8) * 32.
    const std::uint8_t* wr = static_cast<const std::uint8_t*>(w.data) +
                             (static_cast<std::size_t>(n / kPanel) * units * kPanel + n % kPanel) * 32;
    for (int m0 = 0; m0 < a.rows; m0 += kRowsPerPass) {
      const int mt = a.rows - m0 < kRowsPerPass ? a.rows - m0 : kRowsPerPass;
      float acc[kRowsPerPass] = {};
      for (int b = 0; b < K / block; ++b) {
        int32x4_t dots[kRowsPerPass];
        for (auto& v : dots) v = vdupq_n_s32(0);
        for (int k = b * block; k < (b + 1) * block; k += kChunk) {
          uint8x16_t w_lo;
          uint8x16_t w_hi;
          if (q4) {
            const std::uint8_t* cw = wr + static_cast<std::size_t>(k / (2 * kChunk)) * kPanel * 32;
            const uint8x16_t b0 = vld1q_u8(cw);
            const uint8x16_t b1 = vld1q_u8(cw + 16);
            const bool high = (k / kChunk) % 2 != 0;  // the odd chunk of a unit: the high nibbles
            w_lo = high ? vshrq_n_u8(b0, 4) : vandq_u8(b0, low4);
            w_hi = high ? vshrq_n_u8(b1, 4) : vandq_u8(b1, low4);
          } else {
            const std::uint8_t* cw = wr + static_cast<std::size_t>(k / kChunk) * kPanel * 32;
            w_lo = vld1q_u8(cw);
            w_hi = vld1q_u8(cw + 16);
          }
          // Activation chunk k / 32 of row m: ((k / 32) * cap + m) * 32 (kernels.h, QuantizedRows).
          const std::int8_t* xc = a.a.q + static_cast<std::size_t>(k / kChunk) * cap * kChunk;
          for (int m = 0; m < mt; ++m) dots[m] = dot32(w_lo, w_hi, xc + static_cast<std::size_t>(m0 + m) * kChunk, dots[m]);
        }
        const int g = b * block / w.group;
        const float sw = weight_scale(w, n, g);
        const float zs = zero_scale(w, n, g);
        for (int m = 0; m < mt; ++m) {
          const std::size_t ai = static_cast<std::size_t>(b) * cap + m0 + m;
          acc[m] = std::fma(static_cast<float>(vaddvq_s32(dots[m])), sw * a.a.scales[ai], acc[m]);
          acc[m] = std::fma(-zs, a.a.sums[ai], acc[m]);
        }
      }
      for (int m = 0; m < mt; ++m) a.y[static_cast<std::size_t>(m0 + m) * a.ldy + n] = acc[m];
    }
  }
}

void quantize_kernel(const float* x, int rows, int ldx, int cols, int block, int row_capacity, std::int8_t* q,
                     std::int16_t* q16, float* scales, float* sums) {
  const int blocks = cols / block;
  const std::size_t cap = row_capacity;
  for (int m = 0; m < row_capacity; ++m) {
    const float* xr = x + static_cast<std::size_t>(m < rows ? m : 0) * ldx;
    for (int b = 0; b < blocks; ++b) {
      const std::size_t si = static_cast<std::size_t>(b) * row_capacity + m;
      float amax = 0.0f;
      if (m < rows) {
        float32x4_t vmax = vdupq_n_f32(0.0f);
        for (int k = b * block; k < (b + 1) * block; k += 4) vmax = vmaxq_f32(vmax, vabsq_f32(vld1q_f32(xr + k)));
        amax = vmaxvq_f32(vmax);
      }
      const float scale = amax / 127.0f;
      const float32x4_t inv = vdupq_n_f32(amax > 0.0f ? 127.0f / amax : 0.0f);
      int32x4_t sum = vdupq_n_s32(0);
      for (int k = b * block; k < (b + 1) * block; k += 8) {
        int32x4_t c0 = vdupq_n_s32(0);
        int32x4_t c1 = vdupq_n_s32(0);
        if (m < rows) {
          c0 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(xr + k), inv));  // round to nearest, ties to even
          c1 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(xr + k + 4), inv));
        }
        const int16x8_t c16 = vcombine_s16(vqmovn_s32(c0), vqmovn_s32(c1));
        const std::size_t at = (k / kChunk * cap + m) * kChunk + k % kChunk;  // chunk-major (QuantizedRows)
        vst1_s8(q + at, vqmovn_s16(c16));
        if (q16 != nullptr) vst1q_s16(q16 + at, c16);
        sum = vaddq_s32(sum, vaddq_s32(c0, c1));
      }
      scales[si] = scale;
      sums[si] = scale * static_cast<float>(vaddvq_s32(sum));
    }
  }
}

}  // namespace

const KernelTable* neon_kernels() {
  // Float activations against quantized weights only serve export validation, and the vector
  // primitives are a small share of a step: the portable ones.
  static const KernelTable table{"neon", f32_kernel, quantized_kernel, scalar_kernels().dequantized, quantize_kernel,
                                 false, false, portable_vector_kernels()};
  return &table;
}

}  // namespace sdar::cpu
