// Quantized weights (Q4, Q8) x int8 activations on AMX-INT8, for the many rows of a prefill
// (amx_kernels.h; amx.h picks it). Compiled with -mamx-tile -mamx-int8 and the AVX-512 flags of the
// avx512vnni table, and used only with that table on a CPU and OS that allow AMX.
//
// Bit-identical to every kernel table: per activation block the integer dot product sum(u * x) is
// exact in any order, and the float steps are the reference's (kernels.h), in block order from 0.0f:
//   acc = fma(float(dot), sw * sx, acc);  acc = fma(-zero_scale, sum_x, acc)
// with sw * sx and the symmetric zero_scale sw * zero_point each one rounded product, as everywhere.
//
// The integer sums: TDPBSUD multiplies a tile of signed bytes (16 rows of x, up to 64 codes each) by a
// tile of unsigned bytes (the weight codes u in [0, 16) or [0, 256), up to 16 groups of 4 along K x
// 16 output columns) into 16 x 16 int32 sums: sum(u * x) with no zero-point correction and no
// overflow (at most 128 * 255 * 127 per block). The x tile is a strided load straight from the
// avx512vnni table's QuantizedRows (runs of 64 codes, row m of run r at (r * cap + m) * 64, so 16
// consecutive rows of one run are 64 bytes apart); the weights of a strip of 32 output columns are
// unpacked once per call into the tile layout (4 consecutive codes of a column per dword, 16 columns
// per 64-byte row) and then serve every tile of x from L2.
//
// Per pass of 32 rows (two x tiles) against a strip (two weight tiles), per activation block: 4
// accumulator tiles are zeroed, run over the block's one or two K-steps and stored to scratch, and
// the float steps run on 16-lane vectors over the columns (sw and the zero scales per column from the
// two panels of a weight tile, sx and sum_x broadcast per row); the float sums wait in scratch between
// blocks and go to y once the strip is done (rows < M, columns < N only).

// GCC's own AVX-512 intrinsics start from an undefined vector and trip -Wmaybe-uninitialized inside
// its header (a false positive: every lane is written; as in kernels_avx512vnni.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "amx_kernels.h"
#include "kernels.h"

namespace sdar::cpu {
namespace {

// The tiles: accumulators C[x tile][weight tile] in tmm0-3, x tiles in tmm4-5, weight tiles in tmm6-7.
constexpr int kRunBytes = 64;  // the avx512vnni table's runs of x codes (kernels_x86.inl, kXRun)
constexpr int kDotStride = kAmxStripColumns;  // int32 / float scratch rows: 32 columns

// LDTILECFG's 64-byte operand, palette 1: bytes per row and rows of each of the 16 tile registers.
struct alignas(64) TileConfig {
  std::uint8_t palette;
  std::uint8_t start_row;
  std::uint8_t reserved[14];
  std::uint16_t colsb[16];
  std::uint8_t rows[16];
};

// Configures the tiles for K-steps of `step` codes (64, or 32 for activation blocks of 32) for the
// life of one task, and releases them when it ends: a worker thread never keeps tile state between
// tasks (the OS then needs not save it on a context switch, and other code on the thread starts
// from the init state).
class TileScope {
 public:
  explicit TileScope(int step) {
    TileConfig cfg{};
    cfg.palette = 1;
    for (int t = 0; t < 4; ++t) {
      cfg.rows[t] = kAmxTileRows;
      cfg.colsb[t] = 16 * sizeof(std::int32_t);
    }
    for (int t = 4; t < 6; ++t) {  // x: 16 rows x step codes
      cfg.rows[t] = kAmxTileRows;
      cfg.colsb[t] = static_cast<std::uint16_t>(step);
    }
    for (int t = 6; t < 8; ++t) {  // weights: step / 4 rows x 16 columns x 4 codes
      cfg.rows[t] = static_cast<std::uint8_t>(step / 4);
      cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
  }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// One unit of 16 weight rows (8 of panel a, 8 of panel b; each 8 dwords of 32 bytes: Q4 64 codes as
// nibbles, Q8 a chunk of 32 codes) -> out[d]: dword d of each of the 16 rows, lane r = row r. Two
// rounds of in-lane unpacks and one of 128-bit lane shuffles (as the avx512vnni table's transposed
// kernel) leave the rows in the lane order 0 2 4 6 1 3 5 7 8 10 ...; one permute restores row order.
inline void transpose_unit(const std::uint8_t* a, const std::uint8_t* b, __m512i (&out)[8]) {
  __m512i half[2][4];
  for (int p = 0; p < 2; ++p) {
    const std::uint8_t* src = p == 0 ? a : b;
    const __m512i in0 = _mm512_loadu_si512(src);  // rows 0, 1: 128-bit lanes (row 0 dwords 0-3, 4-7, row 1 ...)
    const __m512i in1 = _mm512_loadu_si512(src + 64);
    const __m512i in2 = _mm512_loadu_si512(src + 128);
    const __m512i in3 = _mm512_loadu_si512(src + 192);
    const __m512i lo01 = _mm512_unpacklo_epi32(in0, in1);
    const __m512i hi01 = _mm512_unpackhi_epi32(in0, in1);
    const __m512i lo23 = _mm512_unpacklo_epi32(in2, in3);
    const __m512i hi23 = _mm512_unpackhi_epi32(in2, in3);
    half[p][0] = _mm512_unpacklo_epi64(lo01, lo23);
    half[p][1] = _mm512_unpackhi_epi64(lo01, lo23);
    half[p][2] = _mm512_unpacklo_epi64(hi01, hi23);
    half[p][3] = _mm512_unpackhi_epi64(hi01, hi23);
  }
  const __m512i row_order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
  for (int d = 0; d < 4; ++d) {
    out[d] = _mm512_permutexvar_epi32(row_order, _mm512_shuffle_i64x2(half[0][d], half[1][d], 0x88));
    out[d + 4] = _mm512_permutexvar_epi32(row_order, _mm512_shuffle_i64x2(half[0][d], half[1][d], 0xDD));
  }
}

// The codes of panels pa (columns 0-7) and pb (8-15) in the weight tile layout: 64-byte row k / 4
// holds codes k..k+3 of each column. Q4 unit u gives rows 16u + d (its low nibbles: codes 64u + 4d..)
// and 16u + 8 + d (high nibbles: codes 64u + 32 + 4d..); Q8 chunk c gives rows 8c + d.
template <WeightFormat F>
void unpack_tile(const std::uint8_t* pa, const std::uint8_t* pb, int K, std::uint8_t* out) {
  constexpr std::size_t kUnitBytes = kPanel * 32;
  __m512i codes[8];
  if constexpr (F == WeightFormat::Q4) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    for (int u = 0; u < (K + 63) / 64; ++u) {
      transpose_unit(pa + u * kUnitBytes, pb + u * kUnitBytes, codes);
      std::uint8_t* o = out + static_cast<std::size_t>(u) * 16 * 64;
      for (int d = 0; d < 8; ++d) {
        _mm512_store_si512(o + d * 64, _mm512_and_si512(codes[d], low4));
        _mm512_store_si512(o + (8 + d) * 64, _mm512_and_si512(_mm512_srli_epi16(codes[d], 4), low4));
      }
    }
  } else {
    for (int c = 0; c < K / 32; ++c) {
      transpose_unit(pa + c * kUnitBytes, pb + c * kUnitBytes, codes);
      std::uint8_t* o = out + static_cast<std::size_t>(c) * 8 * 64;
      for (int d = 0; d < 8; ++d) _mm512_store_si512(o + d * 64, codes[d]);
    }
  }
}

// The 16 per-column values (scales or zero scales) of group g for a weight tile: panel a's 8, panel b's 8.
inline __m512 columns16(const float* per_panel, int pa, int pb, int groups, int g) {
  const float* a = per_panel + (static_cast<std::size_t>(pa) * groups + g) * kPanel;
  const float* b = per_panel + (static_cast<std::size_t>(pb) * groups + g) * kPanel;
  const __m512d low = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(a)));
  return _mm512_castpd_ps(_mm512_insertf64x4(low, _mm256_castps_pd(_mm256_loadu_ps(b)), 1));
}

// Integer sums of one activation block [k0, k0 + block) of two x tiles (rows at x and 16 rows further)
// against WT weight tiles (the second b_tile bytes further): C tiles zeroed, the block's K-steps of
// `step` codes, then stored to dot ([32][32] int32). after(i) runs after the i-th TDPBSUD of the
// block (i < steps * 2 * WT): the float steps of the previous block go there, so that the core
// computes them while the tile unit multiplies.
template <int WT, class After>
inline void block_dots(const std::int8_t* x, std::size_t run_bytes, const std::uint8_t* b, std::size_t b_tile, int k0,
                       int block, int step, std::int32_t* dot, After&& after) {
  _tile_zero(0);
  if constexpr (WT == 2) _tile_zero(1);
  _tile_zero(2);
  if constexpr (WT == 2) _tile_zero(3);
  int i = 0;
  for (int k = k0; k < k0 + block; k += step) {
    const std::int8_t* xk = x + static_cast<std::size_t>(k / kRunBytes) * run_bytes + k % kRunBytes;
    const std::uint8_t* bk = b + static_cast<std::size_t>(k / 4) * 64;
    _tile_loadd(4, xk, kRunBytes);
    _tile_loadd(6, bk, 64);
    _tile_dpbsud(0, 4, 6);
    after(i++);
    if constexpr (WT == 2) {
      _tile_loadd(7, bk + b_tile, 64);
      _tile_dpbsud(1, 4, 7);
      after(i++);
    }
    _tile_loadd(5, xk + kAmxTileRows * kRunBytes, kRunBytes);
    _tile_dpbsud(2, 5, 6);
    after(i++);
    if constexpr (WT == 2) {
      _tile_dpbsud(3, 5, 7);
      after(i++);
    }
  }
  constexpr long kStride = kDotStride * sizeof(std::int32_t);
  _tile_stored(0, dot, kStride);
  if constexpr (WT == 2) _tile_stored(1, dot + 16, kStride);
  _tile_stored(2, dot + kAmxTileRows * kDotStride, kStride);
  if constexpr (WT == 2) _tile_stored(3, dot + kAmxTileRows * kDotStride + 16, kStride);
}

// One strip (panels p0..p0 + 2 WT - 1, its codes unpacked in s.b; a missing last panel replaced by
// the one before it: its columns are computed and never stored) against every row of x.
//
// Order: K in chunks of kChunkCodes, and within a chunk every pass of 32 rows over the chunk's
// blocks, so that the chunk of the strip's weights (16 KB) stays in L1 while the x tiles stream from
// L2; the float sums of every row wait in s.acc ([rows][32]) between chunks. (Measured on the
// Qwen3-0.6B shapes, this ran as fast as whole K per pass, where both operands came from L2: the
// tile loads are not what limits this kernel; see docs/cpu-prefill.md.)
//
// Software-pipelined: the (pass, block) items of a chunk run in order, and item j + 1's tile
// instructions are issued interleaved with item j's float steps (its sums in the other half of the
// dot scratch), so the tile unit and the vector units work at the same time (6-8% faster than
// running them one after the other).
constexpr int kChunkCodes = 512;

template <WeightFormat F, int WT>
void strip_rows(const MatmulArgs& a, int p0, const AmxScratch& s, std::size_t b_tile) {
  constexpr int kRows = kAmxPassRows;
  constexpr int kDotInts = kAmxPassRows * kDotStride;  // one block's int32 sums
  const int K = a.w.cols;
  const int block = a.a.block;
  const int step = block < kRunBytes ? block : kRunBytes;
  const int blocks = K / block;
  const int slots = block / step * 2 * WT;  // TDPBSUDs per block: kRows / slots rows of float steps after each
  const int groups = K / a.w.group;
  const int blocks_per_group = a.w.group / block;
  const std::size_t cap = a.a.row_capacity;
  const std::size_t run_bytes = cap * kRunBytes;
  const int passes = static_cast<int>(cap / kAmxPassRows);
  const int chunk_blocks = block < kChunkCodes ? kChunkCodes / block : 1;
  const int panels = (a.w.rows + kPanel - 1) / kPanel;
  int pa[2];
  int pb[2];
  for (int v = 0; v < 2; ++v) {
    pa[v] = p0 + 2 * v < panels ? p0 + 2 * v : p0;
    pb[v] = pa[v] + 1 < panels ? pa[v] + 1 : pa[v];
  }
  const __m512 zero_point = _mm512_set1_ps(F == WeightFormat::Q4 ? 8.0f : 128.0f);

  // The float steps of one item (rows [32 pass, +32), block b), rows [r0, r1) of it: per row and 16
  // columns exactly the reference's two fused steps (kernels.h), blocks in order, from 0.0f.
  __m512 sw[WT];
  __m512 zs[WT];
  const float* sx = nullptr;
  const float* sums = nullptr;
  const std::int32_t* dot = nullptr;
  float* acc = nullptr;
  bool first = false;
  const auto begin_item = [&](int pass, int b, int j) {
    const int g = b / blocks_per_group;
    for (int v = 0; v < WT; ++v) {
      sw[v] = columns16(a.w.scales, pa[v], pb[v], groups, g);
      zs[v] = a.w.symmetric ? _mm512_mul_ps(sw[v], zero_point) : columns16(a.w.zero_scales, pa[v], pb[v], groups, g);
    }
    sx = a.a.scales + static_cast<std::size_t>(b) * cap + pass * kRows;
    sums = a.a.sums + static_cast<std::size_t>(b) * cap + pass * kRows;
    dot = s.dot + (j % 2) * kDotInts;
    acc = s.acc + static_cast<std::size_t>(pass) * kRows * kDotStride;
    first = b == 0;
  };
  const auto float_steps = [&](int r0, int r1) {
    for (int m = r0; m < r1; ++m) {
      const __m512 sxm = _mm512_set1_ps(sx[m]);
      const __m512 summ = _mm512_set1_ps(sums[m]);
      for (int v = 0; v < WT; ++v) {
        float* out = acc + m * kDotStride + 16 * v;
        const __m512 d = _mm512_cvtepi32_ps(_mm512_load_si512(dot + m * kDotStride + 16 * v));
        __m512 r = _mm512_fmadd_ps(d, _mm512_mul_ps(sw[v], sxm), first ? _mm512_setzero_ps() : _mm512_load_ps(out));
        r = _mm512_fnmadd_ps(zs[v], summ, r);
        _mm512_store_ps(out, r);
      }
    }
  };
  const auto x_of = [&](int pass) { return a.a.q + static_cast<std::size_t>(pass) * kRows * kRunBytes; };

  for (int c0 = 0; c0 < blocks; c0 += chunk_blocks) {
    const int n = blocks - c0 < chunk_blocks ? blocks - c0 : chunk_blocks;  // blocks in this chunk
    const int items = passes * n;
    block_dots<WT>(x_of(0), run_bytes, s.b, b_tile, c0 * block, block, step, s.dot, [](int) {});
    for (int j = 0; j < items; ++j) {
      begin_item(j / n, c0 + j % n, j);
      if (j + 1 < items) {
        const int next_pass = (j + 1) / n;
        const int next_b = c0 + (j + 1) % n;
        block_dots<WT>(x_of(next_pass), run_bytes, s.b, b_tile, next_b * block, block, step,
                       s.dot + ((j + 1) % 2) * kDotInts,
                       [&](int i) { float_steps(i * kRows / slots, (i + 1) * kRows / slots); });
      } else {
        float_steps(0, kRows);
      }
    }
  }
  for (int v = 0; v < WT; ++v) {
    const int n0 = p0 * kPanel + 16 * v;
    const int cols = a.w.rows - n0;
    if (cols <= 0) continue;
    const __mmask16 keep = static_cast<__mmask16>(cols >= 16 ? 0xFFFFu : (1u << cols) - 1u);
    for (int m = 0; m < a.rows; ++m) {
      _mm512_mask_storeu_ps(a.y + static_cast<std::size_t>(m) * a.ldy + n0, keep,
                            _mm512_load_ps(s.acc + static_cast<std::size_t>(m) * kDotStride + 16 * v));
    }
  }
}

template <WeightFormat F>
void strips(const MatmulArgs& a, int strip_begin, int strip_end, const AmxScratch& s) {
  const int K = a.w.cols;
  const int panels = (a.w.rows + kPanel - 1) / kPanel;
  const std::size_t panel_bytes =
      (F == WeightFormat::Q4 ? static_cast<std::size_t>((K + 63) / 64) : static_cast<std::size_t>(K / 32)) * kPanel * 32;
  const std::size_t b_tile = static_cast<std::size_t>((K + 63) / 64) * 16 * 64;  // one weight tile's K rows
  const auto* w = static_cast<const std::uint8_t*>(a.w.data);
  const int block = a.a.block;
  const TileScope tiles(block < kRunBytes ? block : kRunBytes);
  for (int strip = strip_begin; strip < strip_end; ++strip) {
    const int p0 = strip * kAmxStripPanels;
    const int strip_panels = panels - p0 < kAmxStripPanels ? panels - p0 : kAmxStripPanels;
    const int wt = strip_panels > 2 ? 2 : 1;
    for (int v = 0; v < wt; ++v) {
      const int pa = p0 + 2 * v;
      const int pb = pa + 1 < panels ? pa + 1 : pa;
      unpack_tile<F>(w + pa * panel_bytes, w + pb * panel_bytes, K, s.b + v * b_tile);
    }
    if (wt == 2) {
      strip_rows<F, 2>(a, p0, s, b_tile);
    } else {
      strip_rows<F, 1>(a, p0, s, b_tile);
    }
  }
}

void quantized_strips(const MatmulArgs& a, int strip_begin, int strip_end, const AmxScratch& s) {
  if (a.w.format == WeightFormat::Q4) {
    strips<WeightFormat::Q4>(a, strip_begin, strip_end, s);
  } else {
    strips<WeightFormat::Q8>(a, strip_begin, strip_end, s);
  }
}

}  // namespace

AmxQuantizedKernel amx_quantized_kernel() { return quantized_strips; }

}  // namespace sdar::cpu
