// Quantized weights x int8 activations with sdot (FEAT_DotProd), included by kernels_dotprod.cpp and
// kernels_i8mm.cpp (each compiled with its instruction set's flags, so everything here stays in an
// unnamed namespace: no copy of an inline function compiled for one of them can serve a caller
// compiled for the plain Armv8.0 baseline).
//
// A tile is 4 weight rows (half a panel) x up to 4 rows of x. sdot multiplies 16 pairs of int8 and
// adds each run of 4 products into one int32 lane, so a row's 32 codes take 2 instructions (the
// vmlal_s16 chain of the NEON table: 8, plus the widening of both operands to int16). The 4-lane
// partial sums of the tile's 4 weight rows are folded into one vector [row 0..3] by 3 pairwise adds
// per block and row of x, and the float steps per block then run on that vector, one lane per weight
// row: the same fused multiply-adds, in the same order, as the portable kernel's, so the results are
// bit-identical to it.
//
// Operands: the activation codes are int8 in [-127, 127]. 4-bit weight codes (0..15) are int8 as
// they are. 8-bit codes (0..255) are not: sdot multiplies (u - 128), flipped from u by one XOR, and
// the block's dot product gets 128 * sum(x codes) back, with sum(x) from sdot against a vector of
// ones (exact integers throughout: a block of at most 128 products of at most 255 * 127).
#include <arm_neon.h>

#include <cstddef>
#include <cstdint>

#include "kernels.h"

namespace sdar::cpu {
namespace {

// Rows n0 .. n0 + 3 of W, n0 a multiple of 4: where row n0's 32 bytes of unit 0 start (the other
// rows follow at 32-byte steps, unit u at u * kPanel * 32 further; packed_matrix.h).
inline const std::uint8_t* quad_units(const PackedMatrix& w, int n0) {
  const std::size_t units = w.format == WeightFormat::Q4 ? (w.cols + 2 * kChunk - 1) / (2 * kChunk) : w.cols / kChunk;
  return static_cast<const std::uint8_t*>(w.data) +
         (static_cast<std::size_t>(n0 / kPanel) * units * kPanel + n0 % kPanel) * 32;
}

// Where the 32-byte rows of the unit holding code k start (k >= 0; a Q4 unit holds 2 chunks).
template <WeightFormat F>
inline const std::uint8_t* chunk_unit(const std::uint8_t* units, int k) {
  const unsigned per_unit = F == WeightFormat::Q4 ? 2 * kChunk : kChunk;
  return units + static_cast<std::size_t>(static_cast<unsigned>(k) / per_unit) * kPanel * 32;
}

// The 32 codes of chunk k / 32 of weight row r of the unit as two vectors of unsigned bytes in code
// order (4-bit codes: the low nibbles of the unit's bytes for its even chunk, the high ones for its
// odd chunk).
template <WeightFormat F>
inline void chunk_codes(const std::uint8_t* unit, int r, int k, uint8x16_t& lo, uint8x16_t& hi) {
  const std::uint8_t* p = unit + r * 32;
  lo = vld1q_u8(p);
  hi = vld1q_u8(p + 16);
  if (F == WeightFormat::Q4) {
    if ((static_cast<unsigned>(k) / kChunk) % 2 != 0) {
      lo = vshrq_n_u8(lo, 4);
      hi = vshrq_n_u8(hi, 4);
    } else {
      lo = vandq_u8(lo, vdupq_n_u8(0x0F));
      hi = vandq_u8(hi, vdupq_n_u8(0x0F));
    }
  }
}

// The per-block float steps of kernels.h for 4 weight rows (lanes) and one row of x: y += dot *
// (scale_w * scale_x), then y -= zero_scale * (scale_x * sum of x codes), each one fused multiply-add.
struct QuadScales {
  float32x4_t scale;        // scale_w of the 4 rows for this block's group
  float32x4_t neg_zero;     // -zero_point * scale_w
};

inline QuadScales quad_scales(const PackedMatrix& w, int n0, int g) {
  const std::size_t at = (static_cast<std::size_t>(n0 / kPanel) * w.groups() + g) * kPanel + n0 % kPanel;
  const float32x4_t scale = vld1q_f32(w.scales + at);
  const float32x4_t zero = w.symmetric ? vmulq_n_f32(scale, symmetric_zero_point(w.format)) : vld1q_f32(w.zero_scales + at);
  return QuadScales{scale, vnegq_f32(zero)};
}

inline float32x4_t block_step(float32x4_t acc, int32x4_t dot, const QuadScales& s, const QuantizedRows& q, int b, int m) {
  const std::size_t ai = static_cast<std::size_t>(b) * q.row_capacity + m;
  acc = vfmaq_f32(acc, vcvtq_f32_s32(dot), vmulq_n_f32(s.scale, q.scales[ai]));
  return vfmaq_f32(acc, s.neg_zero, vdupq_n_f32(q.sums[ai]));
}

// Row m of y, columns n0 .. n0 + 3 (those below the matrix's rows).
inline void store_quad(const MatmulArgs& a, int n0, int m, float32x4_t v) {
  float* y = a.y + static_cast<std::size_t>(m) * a.ldy + n0;
  if (n0 + 4 <= a.w.rows) {
    vst1q_f32(y, v);
    return;
  }
  float out[4];
  vst1q_f32(out, v);
  for (int j = 0; n0 + j < a.w.rows; ++j) y[j] = out[j];
}

// Rows m0 .. m0 + MT - 1 of x (plain run-major layout, kernels.h) against weight rows n0 .. n0 + 3.
template <WeightFormat F, int MT>
void sdot_tile(const MatmulArgs& a, int n0, int m0) {
  const PackedMatrix& w = a.w;
  const QuantizedRows& q = a.a;
  const std::uint8_t* units = quad_units(w, n0);
  const int8x16_t ones = vdupq_n_s8(1);
  const uint8x16_t flip = vdupq_n_u8(0x80);
  float32x4_t acc[MT];
  for (auto& v : acc) v = vdupq_n_f32(0.0f);
  for (int b = 0; b < w.cols / q.block; ++b) {
    int32x4_t dots[4][MT];
    int32x4_t xsum[MT];
    for (int m = 0; m < MT; ++m) {
      xsum[m] = vdupq_n_s32(0);
      for (int r = 0; r < 4; ++r) dots[r][m] = vdupq_n_s32(0);
    }
    for (int k = b * q.block; k < (b + 1) * q.block; k += kChunk) {
      const std::uint8_t* unit = chunk_unit<F>(units, k);
      int8x16_t wv[4][2];
      for (int r = 0; r < 4; ++r) {
        uint8x16_t lo;
        uint8x16_t hi;
        chunk_codes<F>(unit, r, k, lo, hi);
        if (F == WeightFormat::Q8) {
          lo = veorq_u8(lo, flip);  // u - 128 as int8
          hi = veorq_u8(hi, flip);
        }
        wv[r][0] = vreinterpretq_s8_u8(lo);
        wv[r][1] = vreinterpretq_s8_u8(hi);
      }
      const std::int8_t* xc = q.q + (static_cast<std::size_t>(k / kChunk) * q.row_capacity + m0) * kChunk;
      for (int m = 0; m < MT; ++m) {
        const int8x16_t x0 = vld1q_s8(xc + m * kChunk);
        const int8x16_t x1 = vld1q_s8(xc + m * kChunk + 16);
        for (int r = 0; r < 4; ++r) dots[r][m] = vdotq_s32(vdotq_s32(dots[r][m], wv[r][0], x0), wv[r][1], x1);
        if (F == WeightFormat::Q8) xsum[m] = vdotq_s32(vdotq_s32(xsum[m], ones, x0), ones, x1);
      }
    }
    const QuadScales s = quad_scales(w, n0, b * q.block / w.group);
    for (int m = 0; m < MT; ++m) {
      int32x4_t dot = vpaddq_s32(vpaddq_s32(dots[0][m], dots[1][m]), vpaddq_s32(dots[2][m], dots[3][m]));
      if (F == WeightFormat::Q8) dot = vaddq_s32(dot, vdupq_n_s32(128 * vaddvq_s32(xsum[m])));
      acc[m] = block_step(acc[m], dot, s, q, b, m0 + m);
    }
  }
  for (int m = 0; m < MT && m0 + m < a.rows; ++m) store_quad(a, n0, m0 + m, acc[m]);
}

template <WeightFormat F>
void sdot_rows(const MatmulArgs& a, int panel_begin, int panel_end) {
  const int n_end = panel_end * kPanel < a.w.rows ? panel_end * kPanel : a.w.rows;
  for (int n0 = panel_begin * kPanel; n0 < n_end; n0 += 4) {
    // Rows past M inside a tile read the zero codes the quantize kernel wrote up to the row capacity.
    for (int m0 = 0; m0 < a.rows; m0 += 4) {
      const int left = a.rows - m0;
      if (left == 1) {
        sdot_tile<F, 1>(a, n0, m0);
      } else if (left == 2) {
        sdot_tile<F, 2>(a, n0, m0);
      } else {
        sdot_tile<F, 4>(a, n0, m0);
      }
    }
  }
}

void sdot_quantized_kernel(const MatmulArgs& a, int panel_begin, int panel_end) {
  if (a.w.format == WeightFormat::Q4) {
    sdot_rows<WeightFormat::Q4>(a, panel_begin, panel_end);
  } else {
    sdot_rows<WeightFormat::Q8>(a, panel_begin, panel_end);
  }
}

}  // namespace
}  // namespace sdar::cpu
