// The i8mm table (AArch64 with FEAT_I8MM as well as FEAT_DotProd: Neoverse V1/N2/V2 such as
// Graviton 3 and 4, Apple M2 and later), compiled with -march=armv8.2-a+dotprod+i8mm and used only
// when the CPU reports both (cpu_features.cpp).
//
// smmla multiplies a 2 x 8 int8 matrix by an 8 x 2 one into a 2 x 2 int32 tile: 32 multiply-adds per
// instruction (sdot: 16), all of them useful when 2 weight rows meet 2 rows of x. usmmla is the same
// with the first operand unsigned, so 8-bit weight codes (0..255) multiply as they are, with no
// correction. A tile is 4 weight rows (2 pairs) x up to 8 rows of x (4 pairs), or with at most 4 rows
// of x (a decoding step of a block of 4) a whole panel (4 pairs) x 2 pairs.
//
// Operand layout: a 128-bit operand is [row i codes k..k+7 | row i + 1 codes k..k+7]. For the weights
// two zips per 16 codes of a row pair build that from the packed rows; the activations come that way
// from this table's quantize kernel: within each run of 32 codes, rows 2p and 2p + 1 (64 bytes, where
// the plain layout has row 2p's 32 codes, then row 2p + 1's) are stored interleaved by 8 codes. With
// one row of x (autoregressive decoding) half of every smmla would multiply padding, so that case
// keeps the plain layout and runs the sdot kernel, as the dot-product table does.
//
// A tile's accumulators end a block as [w0 x0, w0 x1, w1 x0, w1 x1] per pair of weight rows and pair
// of x rows; two unzips per pair of x rows turn the two weight pairs' into [w0..w3] for x row 0 and
// for x row 1, and the float steps per block run on those as in the sdot kernel: bit-identical to the
// portable kernel.
#include "quantized_sdot.inl"

namespace sdar::cpu {
namespace {

// Chunk k / 32 of weight rows r and r + 1 of the unit (chunk_unit), as smmla's first operand:
// out[i] = [row r codes 8i..8i+7 | row r + 1 codes 8i..8i+7].
template <WeightFormat F>
inline void pair_codes(const std::uint8_t* unit, int r, int k, uint8x16_t (&out)[4]) {
  uint8x16_t a_lo;
  uint8x16_t a_hi;
  uint8x16_t b_lo;
  uint8x16_t b_hi;
  chunk_codes<F>(unit, r, k, a_lo, a_hi);
  chunk_codes<F>(unit, r + 1, k, b_lo, b_hi);
  const uint64x2_t a0 = vreinterpretq_u64_u8(a_lo);
  const uint64x2_t a1 = vreinterpretq_u64_u8(a_hi);
  const uint64x2_t b0 = vreinterpretq_u64_u8(b_lo);
  const uint64x2_t b1 = vreinterpretq_u64_u8(b_hi);
  out[0] = vreinterpretq_u8_u64(vzip1q_u64(a0, b0));
  out[1] = vreinterpretq_u8_u64(vzip2q_u64(a0, b0));
  out[2] = vreinterpretq_u8_u64(vzip1q_u64(a1, b1));
  out[3] = vreinterpretq_u8_u64(vzip2q_u64(a1, b1));
}

// Rows m0 .. m0 + 2 * MP - 1 of x (interleaved layout, m0 even) against weight rows n0 .. n0 + 2 * WP - 1
// (WP = 2: a quad, n0 a multiple of 4; WP = 4: a whole panel).
template <WeightFormat F, int WP, int MP>
void mmla_tile(const MatmulArgs& a, int n0, int m0) {
  constexpr int kQuads = WP / 2;
  const PackedMatrix& w = a.w;
  const QuantizedRows& q = a.a;
  const std::uint8_t* units = quad_units(w, n0);
  float32x4_t acc[kQuads][2 * MP];  // [weight quad][x row]
  for (auto& quad : acc) {
    for (auto& v : quad) v = vdupq_n_f32(0.0f);
  }
  for (int b = 0; b < w.cols / q.block; ++b) {
    int32x4_t tiles[WP][MP];  // [weight pair][x pair]
    for (auto& pair : tiles) {
      for (auto& v : pair) v = vdupq_n_s32(0);
    }
    for (int k = b * q.block; k < (b + 1) * q.block; k += kChunk) {
      const std::uint8_t* unit = chunk_unit<F>(units, k);
      uint8x16_t wv[WP][4];
      for (int p = 0; p < WP; ++p) pair_codes<F>(unit, 2 * p, k, wv[p]);
      const std::int8_t* xc = q.q + (static_cast<std::size_t>(k / kChunk) * q.row_capacity + m0) * kChunk;
      for (int j = 0; j < MP; ++j) {
        int8x16_t xv[4];
        for (int i = 0; i < 4; ++i) xv[i] = vld1q_s8(xc + j * 2 * kChunk + i * 16);
        for (int p = 0; p < WP; ++p) {
          for (int i = 0; i < 4; ++i) {
            if (F == WeightFormat::Q4) {
              tiles[p][j] = vmmlaq_s32(tiles[p][j], vreinterpretq_s8_u8(wv[p][i]), xv[i]);
            } else {
              tiles[p][j] = vusmmlaq_s32(tiles[p][j], wv[p][i], xv[i]);
            }
          }
        }
      }
    }
    for (int h = 0; h < kQuads; ++h) {
      const QuadScales s = quad_scales(w, n0 + 4 * h, b * q.block / w.group);
      for (int j = 0; j < MP; ++j) {
        const int m = m0 + 2 * j;
        acc[h][2 * j] = block_step(acc[h][2 * j], vuzp1q_s32(tiles[2 * h][j], tiles[2 * h + 1][j]), s, q, b, m);
        acc[h][2 * j + 1] = block_step(acc[h][2 * j + 1], vuzp2q_s32(tiles[2 * h][j], tiles[2 * h + 1][j]), s, q, b, m + 1);
      }
    }
  }
  for (int h = 0; h < kQuads; ++h) {
    for (int m = 0; m < 2 * MP && m0 + m < a.rows; ++m) store_quad(a, n0 + 4 * h, m0 + m, acc[h][m]);
  }
}

template <WeightFormat F>
void mmla_rows(const MatmulArgs& a, int panel_begin, int panel_end) {
  const int n_end = panel_end * kPanel < a.w.rows ? panel_end * kPanel : a.w.rows;
  if (a.rows <= 4) {
    // Up to 2 pairs of x rows: whole panels, so that each weight pair's zipped codes feed as many
    // smmla as with 4 pairs of x rows against half a panel (rows past M hold zero codes).
    for (int n0 = panel_begin * kPanel; n0 < n_end; n0 += kPanel) {
      if (a.rows <= 2) {
        mmla_tile<F, 4, 1>(a, n0, 0);
      } else {
        mmla_tile<F, 4, 2>(a, n0, 0);
      }
    }
    return;
  }
  for (int n0 = panel_begin * kPanel; n0 < n_end; n0 += 4) {
    // Tiles of 8 rows, the last one rounded up to 2, 4 or 8 (within the row capacity, a multiple of
    // 8; rows past M hold zero codes).
    for (int m0 = 0; m0 < a.rows; m0 += 8) {
      const int left = a.rows - m0;
      if (left <= 2) {
        mmla_tile<F, 2, 1>(a, n0, m0);
      } else if (left <= 4) {
        mmla_tile<F, 2, 2>(a, n0, m0);
      } else {
        mmla_tile<F, 2, 4>(a, n0, m0);
      }
    }
  }
}

void mmla_quantized_kernel(const MatmulArgs& a, int panel_begin, int panel_end) {
  if (a.rows == 1) {
    sdot_quantized_kernel(a, panel_begin, panel_end);
  } else if (a.w.format == WeightFormat::Q4) {
    mmla_rows<WeightFormat::Q4>(a, panel_begin, panel_end);
  } else {
    mmla_rows<WeightFormat::Q8>(a, panel_begin, panel_end);
  }
}

// The NEON table's quantization (the same codes, scales and sums), then, for 2 rows or more, each
// 64-byte run pair rearranged in place into the interleaved layout above.
void interleaved_quantize(const float* x, int rows, int ldx, int cols, int block, int row_capacity, std::int8_t* q,
                          std::int16_t* q16, float* scales, float* sums) {
  neon_kernels()->quantize(x, rows, ldx, cols, block, row_capacity, q, q16, scales, sums);
  if (rows == 1) return;
  const std::size_t pairs = static_cast<std::size_t>(cols / kChunk) * row_capacity / 2;
  for (std::size_t i = 0; i < pairs; ++i) {
    std::int8_t* p = q + i * 2 * kChunk;
    const uint64x2_t a0 = vreinterpretq_u64_s8(vld1q_s8(p));
    const uint64x2_t a1 = vreinterpretq_u64_s8(vld1q_s8(p + 16));
    const uint64x2_t b0 = vreinterpretq_u64_s8(vld1q_s8(p + 32));
    const uint64x2_t b1 = vreinterpretq_u64_s8(vld1q_s8(p + 48));
    vst1q_s8(p, vreinterpretq_s8_u64(vzip1q_u64(a0, b0)));
    vst1q_s8(p + 16, vreinterpretq_s8_u64(vzip2q_u64(a0, b0)));
    vst1q_s8(p + 32, vreinterpretq_s8_u64(vzip1q_u64(a1, b1)));
    vst1q_s8(p + 48, vreinterpretq_s8_u64(vzip2q_u64(a1, b1)));
  }
}

}  // namespace

const KernelTable* i8mm_kernels() {
  const KernelTable& neon = *neon_kernels();
  static const KernelTable table{"i8mm", neon.f32, mmla_quantized_kernel, neon.dequantized, interleaved_quantize,
                                 false, false, neon.vec};
  return &table;
}

}  // namespace sdar::cpu
