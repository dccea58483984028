// x86-64 kernels, compiled once per table (kernels_avx2.cpp, kernels_avxvnni.cpp,
// kernels_avx512vnni.cpp) with that source's instruction-set flags; SDAR_X86_VNNI selects the
// integer dot product:
//   0 (AVX2): vpmaddubsw multiplies the unsigned weight codes (u8) by the signed activation codes
//     (s8) and adds pairs into int16. With 4-bit codes a pair is at most 2 * 15 * 127 = 3810, so the
//     int16 sums of 8 steps stay below 2^15 and one vpmaddwd widens them. 8-bit codes (up to 255)
//     would saturate vpmaddubsw, so Q8 widens both sides to int16 and uses vpmaddwd.
//   1 (AVX-512 VNNI, 256-bit vectors): vpdpbusd adds four u8 * s8 products straight into int32,
//     for 4-bit and 8-bit codes alike; 512-bit for chunk pairs and the transposed kernel.
//   2 (AVX-VNNI: the same vpdpbusd, VEX-encoded, 256-bit only; CPUs with it but without AVX-512):
//     the AVX2 table's kernels with vpdpbusd as the dot step.
// From 4 rows of x on, quantized weights go through a transposed kernel (one lane per output row):
// quantized_vnni.inl (512-bit) for 1, quantized_transposed256.inl for 0 (4-bit codes) and 2.
// Everything here has internal linkage: the compilations never share a symbol.
#include <immintrin.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels.h"

#ifndef SDAR_X86_VNNI
#error "define SDAR_X86_VNNI (0, 1 or 2) before including kernels_x86.inl"
#endif

namespace sdar::cpu {
namespace {

// This table's layout of the int8 activation codes (QuantizedRows::q; only its own kernels read
// them): runs of kXRun codes per row, [K / kXRun][cap][kXRun]. The VNNI kernels multiply 64 codes
// per instruction (512-bit vpdpbusd, twice the work of a 256-bit one for the same issue slot), so
// they keep chunk pairs together; the 256-bit tables work per chunk of 32.
#if SDAR_X86_VNNI == 1
constexpr int kXRun = 2 * kChunk;
#else
constexpr int kXRun = kChunk;
#endif
constexpr int kChunksPerRun = kXRun / kChunk;
constexpr std::size_t kPrefetchBytes = 4096;
// A second, farther prefetch into L2 (the float32 kernel, and the transposed int kernel's tiles of
// up to 4 rows): with only the L1 prefetches, each holding a miss buffer until its line arrives, too
// little of the stream was in flight (its address: pair_prefetch_offset). Measured on a 2-core
// Zen 4, each kernel against itself without it in one process, alternating, over 100-300 MB of
// 1024 x 3072 matrices: float32 0.78-0.94x the time at 4 and 8 rows (16-96 KB, the best from 32-64
// KB) and 0.88-0.98x at 1 and 2; int4 0.85-0.93x at 4 rows (12-64 KB), no faster at 8, whose
// arithmetic leaves the memory more time (so its 8-row tiles skip it), and the per-row int kernel
// (1 and 2 rows) slower with it.
constexpr std::size_t kFarPrefetchBytes = 32768;
// The float32 kernel's near prefetch for tiles of 1 or 2 rows (see f32_pair).
constexpr std::size_t kSmallTilePrefetchBytes = 2048;

// Where a pair kernel prefetches `distance` bytes ahead of `at`, bytes into a panel of
// `panel_bytes`, as an offset from `at`: past the panel's end it skips the other panel of the pair
// (a thread's panels are contiguous, pair after pair), so that the two streams together cover them once.
inline std::size_t pair_prefetch_offset(std::size_t at, std::size_t distance, std::size_t panel_bytes) {
  return at + distance < panel_bytes ? distance : distance + panel_bytes;
}

// Offset of chunk c of row m, relative to chunk 0 of row 0.
inline std::size_t x_chunk(int c, int m, std::size_t cap) {
  return (static_cast<std::size_t>(c / kChunksPerRun) * cap + m) * kXRun + (c % kChunksPerRun) * kChunk;
}

#if SDAR_X86_VNNI
// acc + the four u8 * s8 products of each 32-bit lane of codes and x (vpdpbusd, 256-bit).
inline __m256i x86_dpbusd(__m256i acc, __m256i codes, __m256i x) {
#if SDAR_X86_VNNI == 1
  return _mm256_dpbusd_epi32(acc, codes, x);
#elif defined(SDAR_X86_DPBUSD_EMULATED)
  // A test build's stand-in on CPUs without AVX-VNNI (runtime/tests): the same exact sums from AVX2.
  const __m256i low8 = _mm256_set1_epi16(0x00FF);
  const __m256i even = _mm256_madd_epi16(_mm256_and_si256(codes, low8), _mm256_srai_epi16(_mm256_slli_epi16(x, 8), 8));
  const __m256i odd = _mm256_madd_epi16(_mm256_srli_epi16(codes, 8), _mm256_srai_epi16(x, 8));
  return _mm256_add_epi32(acc, _mm256_add_epi32(even, odd));
#else
  return _mm256_dpbusd_avx_epi32(acc, codes, x);
#endif
}
#endif

// Horizontal sums of 8 vectors: lane j of the result is the sum of v[j]'s lanes.
inline __m256i reduce8(const __m256i* v) {
  const __m256i a = _mm256_hadd_epi32(v[0], v[1]);
  const __m256i b = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i c = _mm256_hadd_epi32(v[4], v[5]);
  const __m256i d = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i ab = _mm256_hadd_epi32(a, b);
  const __m256i cd = _mm256_hadd_epi32(c, d);
  return _mm256_add_epi32(_mm256_permute2x128_si256(ab, cd, 0x20), _mm256_permute2x128_si256(ab, cd, 0x31));
}

inline __m256 reduce8(const __m256* v) {
  const __m256 a = _mm256_hadd_ps(v[0], v[1]);
  const __m256 b = _mm256_hadd_ps(v[2], v[3]);
  const __m256 c = _mm256_hadd_ps(v[4], v[5]);
  const __m256 d = _mm256_hadd_ps(v[6], v[7]);
  const __m256 ab = _mm256_hadd_ps(a, b);
  const __m256 cd = _mm256_hadd_ps(c, d);
  return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

// A tile of MT rows of x against R = 8 / MT rows of a panel: accumulator j = r * MT + m, so after
// reduce8 lane j holds (panel row r0 + j / MT, x row first + j % MT).
template <int MT>
inline __m256i panel_row_lanes(int r0) {
  return _mm256_setr_epi32(r0 + 0 / MT, r0 + 1 / MT, r0 + 2 / MT, r0 + 3 / MT, r0 + 4 / MT, r0 + 5 / MT, r0 + 6 / MT,
                           r0 + 7 / MT);
}

// Per-row activation values (scales, sums) for the lanes of a tile: lane j <- p[j % MT].
template <int MT>
inline __m256 x_row_lanes(const float* p) {
  if constexpr (MT == 8) return _mm256_loadu_ps(p);
  if constexpr (MT == 4) return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(p));
  if constexpr (MT == 2) return _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(p)));
  if constexpr (MT == 1) return _mm256_broadcast_ss(p);
}

template <int MT>
inline void store_lanes(const MatmulArgs& a, __m256 v, int panel, int r0, const MTile& t) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  for (int j = 0; j < 8; ++j) {
    const int n = panel * kPanel + r0 + j / MT;
    const int m = t.first + j % MT;
    if (m < a.rows && n < a.w.rows) a.y[static_cast<std::size_t>(m) * a.ldy + n] = lanes[j];
  }
}

// Per-panel scale pointers of a quantized matrix.
struct PanelScales {
  const float* scales;
  const float* zero_scales;  // null: symmetric
  __m256 zero_point;
};

inline PanelScales panel_scales(const PackedMatrix& w, int panel, int groups) {
  const std::size_t at = static_cast<std::size_t>(panel) * groups * kPanel;
  return PanelScales{w.scales + at, w.symmetric ? nullptr : w.zero_scales + at,
                     _mm256_set1_ps(w.format == WeightFormat::Q4 ? 8.0f : 128.0f)};
}

// ---------------------------------------------------------------- float32 weights

// Outer products: for each k, the 8 weights of column k of panel a and of panel b (one vector
// each) times x[m][k] broadcast, into acc[m][0] and acc[m][1] (8 outputs each). Two panels per
// pass, so each broadcast of x feeds two multiply-adds: with one panel the loads (a broadcast per
// multiply-add) held the FMA units to about half their rate. Fewer than 4 rows keep 8 accumulators
// anyway by splitting k into 4 / MT interleaved phases (summed at the end): 8 independent chains
// hide the FMA latency. Each panel is read once, front to back; pb == pa for a single panel.
template <int MT>
void f32_pair(const MatmulArgs& a, int pa, int pb, const MTile& t) {
  constexpr int PHASES = MT >= 4 ? 1 : 4 / MT;  // (8-row tiles, which float32 matmuls never make: 1)
  const int K = a.w.cols;
  const std::size_t cap = a.row_capacity;
  const auto* w = static_cast<const float*>(a.w.data);
  const float* wa = w + static_cast<std::size_t>(pa) * K * kPanel;
  const float* wb = w + static_cast<std::size_t>(pb) * K * kPanel;
  const float* xp = a.xp + static_cast<std::size_t>(t.first) * kF32Step;
  __m256 acc[MT][2][PHASES];
#pragma GCC unroll 4
  for (int m = 0; m < MT; ++m) {
#pragma GCC unroll 2
    for (int p = 0; p < 2; ++p) {
#pragma GCC unroll 4
      for (int h = 0; h < PHASES; ++h) acc[m][p][h] = _mm256_setzero_ps();
    }
  }
  const int full = K / kF32Step;
  const bool prefetch = t.first == 0;  // the first tile streams the panels; the others find them in cache
  const std::size_t panel_bytes = static_cast<std::size_t>(K) * kPanel * sizeof(float);
  for (int s = 0; s < full; ++s) {
    const std::size_t at = static_cast<std::size_t>(s) * kF32Step * kPanel;
    const float* xs = xp + s * cap * kF32Step;
    if (prefetch) {
      // A few KB ahead in both panels (past a panel's end the address lands in the thread's next
      // panels: they are contiguous; prefetches never fault), so DRAM streams while this step computes.
      // Tiles of 1 or 2 rows, which compute little per line, take it 2 KB ahead into L2 instead:
      // 0.88-0.95x the time at 1 row, 0.96-0.97x at 2 (measured as the far prefetch below).
      const auto* a_bytes = reinterpret_cast<const char*>(wa + at);
      const auto* b_bytes = reinterpret_cast<const char*>(wb + at);
#pragma GCC unroll 4
      for (int line = 0; line < kF32Step * kPanel * 4; line += 64) {
        if constexpr (MT <= 2) {
          _mm_prefetch(a_bytes + kSmallTilePrefetchBytes + line, _MM_HINT_T1);
          _mm_prefetch(b_bytes + kSmallTilePrefetchBytes + line, _MM_HINT_T1);
        } else {
          _mm_prefetch(a_bytes + kPrefetchBytes + line, _MM_HINT_T0);
          _mm_prefetch(b_bytes + kPrefetchBytes + line, _MM_HINT_T0);
        }
      }
      const std::size_t far = pair_prefetch_offset(at * sizeof(float), kFarPrefetchBytes, panel_bytes);
#pragma GCC unroll 4
      for (int line = 0; line < kF32Step * kPanel * 4; line += 64) {
        _mm_prefetch(a_bytes + far + line, _MM_HINT_T1);
        _mm_prefetch(b_bytes + far + line, _MM_HINT_T1);
      }
    }
#pragma GCC unroll 8
    for (int l = 0; l < kF32Step; ++l) {
      const __m256 w0 = _mm256_loadu_ps(wa + at + l * kPanel);
      const __m256 w1 = _mm256_loadu_ps(wb + at + l * kPanel);
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) {
        const __m256 xv = _mm256_broadcast_ss(xs + m * kF32Step + l);
        acc[m][0][l % PHASES] = _mm256_fmadd_ps(w0, xv, acc[m][0][l % PHASES]);
        acc[m][1][l % PHASES] = _mm256_fmadd_ps(w1, xv, acc[m][1][l % PHASES]);
      }
    }
  }
  for (int k = full * kF32Step; k < K; ++k) {  // the last, partial step of x
    const __m256 w0 = _mm256_loadu_ps(wa + static_cast<std::size_t>(k) * kPanel);
    const __m256 w1 = _mm256_loadu_ps(wb + static_cast<std::size_t>(k) * kPanel);
    const float* xs = xp + (k / kF32Step) * cap * kF32Step + k % kF32Step;
    for (int m = 0; m < MT; ++m) {
      const __m256 xv = _mm256_broadcast_ss(xs + m * kF32Step);
      acc[m][0][0] = _mm256_fmadd_ps(w0, xv, acc[m][0][0]);
      acc[m][1][0] = _mm256_fmadd_ps(w1, xv, acc[m][1][0]);
    }
  }
  alignas(32) float out[8];
  for (int p = 0; p < (pb == pa ? 1 : 2); ++p) {
    const int panel = p == 0 ? pa : pb;
    const int n = a.w.rows - panel * kPanel < kPanel ? a.w.rows - panel * kPanel : kPanel;
    for (int m = 0; m < MT && t.first + m < a.rows; ++m) {
      __m256 sum = acc[m][p][0];
      for (int h = 1; h < PHASES; ++h) sum = _mm256_add_ps(sum, acc[m][p][h]);
      _mm256_store_ps(out, sum);
      float* y = a.y + static_cast<std::size_t>(t.first + m) * a.ldy + panel * kPanel;
      for (int j = 0; j < n; ++j) y[j] = out[j];
    }
  }
}

// ---------------------------------------------------------------- quantized weights, int8 activations

// Bytes of one panel of a quantized matrix (32 bytes per row per unit; see packed_matrix.h).
template <WeightFormat F>
inline std::size_t panel_units(int K) {
  return F == WeightFormat::Q4 ? static_cast<std::size_t>((K + 2 * kChunk - 1) / (2 * kChunk)) : K / kChunk;
}

inline const std::uint8_t* unit_row(const std::uint8_t* panel_base, std::size_t unit, int row) {
  return panel_base + (unit * kPanel + row) * 32;
}

// The 32 codes (u8, in order) of chunk c of a panel row.
template <WeightFormat F>
inline __m256i chunk_codes(const std::uint8_t* panel_base, int c, int row) {
  if constexpr (F == WeightFormat::Q4) {
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(unit_row(panel_base, c / 2, row)));
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    return c % 2 == 0 ? _mm256_and_si256(bytes, low4) : _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
  } else {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(unit_row(panel_base, c, row)));
  }
}

// Integer dot products of one block of CHUNKS chunks: s32[r * MT + m] (lanes: partial sums) =
// sum over the block of code(r0 + r, k) * x(m, k). `w`: the panel's codes; `chunk0`: the block's
// first chunk; `x`: the block's first chunk of the tile's first row (x_chunk layout; its first chunk
// starts a run unless CHUNKS is 1); `x16`: the same as int16, chunk-major (AVX2 Q8).
template <WeightFormat F, int MT, int CHUNKS>
inline void block_dots(const std::uint8_t* w, int chunk0, int r0, const std::int8_t* x, const std::int16_t* x16,
                       std::size_t cap, __m256i (&s32)[8]) {
  constexpr int R = 8 / MT;
  (void)x16;
  // Each row's codes are unpacked once, then applied to every row of x (the block's codes of one
  // row stay in registers; the accumulators of one x row live only while it is summed).
#if SDAR_X86_VNNI
#if SDAR_X86_VNNI == 1
  if constexpr (CHUNKS % 2 == 0) {
    // 512-bit: two chunks per vpdpbusd, the codes in the activations' order (chunk c, then c + 1).
    constexpr int PAIRS = CHUNKS / 2;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m512i codes[PAIRS];
      for (int p = 0; p < PAIRS; ++p) {
        const int c = chunk0 + 2 * p;  // even: a block of 2 or 4 chunks starts a run
        if constexpr (F == WeightFormat::Q4) {
          // One run of 64 codes: its 32 bytes, then the same shifted: [low nibbles | high nibbles].
          const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(unit_row(w, c / 2, r0 + r)));
          codes[p] = _mm512_and_si512(_mm512_inserti64x4(_mm512_zextsi256_si512(bytes), _mm256_srli_epi16(bytes, 4), 1),
                                      _mm512_set1_epi8(0x0F));
        } else {
          codes[p] = _mm512_inserti64x4(
              _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(unit_row(w, c, r0 + r)))),
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(unit_row(w, c + 1, r0 + r))), 1);
        }
      }
      for (int m = 0; m < MT; ++m) {
        __m512i acc = _mm512_setzero_si512();
        for (int p = 0; p < PAIRS; ++p) {
          acc = _mm512_dpbusd_epi32(acc, codes[p], _mm512_loadu_si512(x + x_chunk(2 * p, m, cap)));
        }
        s32[r * MT + m] = _mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
      }
    }
    return;
  }
#endif
  for (int r = 0; r < R; ++r) {
    __m256i codes[CHUNKS];
    for (int c = 0; c < CHUNKS; ++c) codes[c] = chunk_codes<F>(w, chunk0 + c, r0 + r);
    for (int m = 0; m < MT; ++m) {
      __m256i acc = _mm256_setzero_si256();
      for (int c = 0; c < CHUNKS; ++c) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + x_chunk(c, m, cap)));
        acc = x86_dpbusd(acc, codes[c], xv);
      }
      s32[r * MT + m] = acc;
    }
  }
#else
  if constexpr (F == WeightFormat::Q4) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = 0; r < R; ++r) {
      __m256i codes[CHUNKS];
      for (int c = 0; c < CHUNKS; ++c) codes[c] = chunk_codes<F>(w, chunk0 + c, r0 + r);
      for (int m = 0; m < MT; ++m) {
        __m256i acc = _mm256_setzero_si256();
        for (int c = 0; c < CHUNKS; ++c) {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + x_chunk(c, m, cap)));
          acc = _mm256_add_epi16(acc, _mm256_maddubs_epi16(codes[c], xv));
        }
        s32[r * MT + m] = _mm256_madd_epi16(acc, ones);
      }
    }
  } else {
    for (auto& v : s32) v = _mm256_setzero_si256();
    for (int c = 0; c < CHUNKS; ++c) {
      const std::int16_t* xc = x16 + c * cap * kChunk;
      for (int r = 0; r < R; ++r) {
        const std::uint8_t* cw = unit_row(w, chunk0 + c, r0 + r);
        const __m256i lo = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cw)));
        const __m256i hi = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cw + 16)));
        for (int m = 0; m < MT; ++m) {
          const std::int16_t* xm = xc + m * kChunk;
          const __m256i d0 = _mm256_madd_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm)));
          const __m256i d1 = _mm256_madd_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm + 16)));
          s32[r * MT + m] = _mm256_add_epi32(s32[r * MT + m], _mm256_add_epi32(d0, d1));
        }
      }
    }
  }
#endif
}

template <WeightFormat F, int MT, int CHUNKS>
void quantized_tile(const MatmulArgs& a, int panel, const MTile& t) {
  constexpr int R = 8 / MT;
  constexpr int block = CHUNKS * kChunk;
  const int K = a.w.cols;
  const int groups = K / a.w.group;
  const int blocks_per_group = a.w.group / block;
  const std::size_t cap = a.a.row_capacity;
  const auto* wp = static_cast<const std::uint8_t*>(a.w.data) + static_cast<std::size_t>(panel) * panel_units<F>(K) * kPanel * 32;
  const PanelScales ps = panel_scales(a.w, panel, groups);
  const std::int16_t* xq16 = a.a.q16 != nullptr ? a.a.q16 + static_cast<std::size_t>(t.first) * kChunk : nullptr;
  // Block by block, each block's codes of all 8 rows in turn (the passes of R rows), so the panel is
  // read front to back once: with the passes outermost each would read DRAM with a stride.
  constexpr int PASSES = kPanel / R;
  __m256 acc[PASSES];
  for (auto& v : acc) v = _mm256_setzero_ps();
  for (int g = 0; g < groups; ++g) {
    const __m256 sw_all = _mm256_loadu_ps(ps.scales + static_cast<std::size_t>(g) * kPanel);
    const __m256 zs_all = ps.zero_scales != nullptr ? _mm256_loadu_ps(ps.zero_scales + static_cast<std::size_t>(g) * kPanel)
                                                    : _mm256_mul_ps(sw_all, ps.zero_point);
    for (int bg = 0; bg < blocks_per_group; ++bg) {
      const int b = g * blocks_per_group + bg;
      const std::size_t chunk0 = static_cast<std::size_t>(b) * CHUNKS;
      const __m256 sx = x_row_lanes<MT>(a.a.scales + static_cast<std::size_t>(b) * cap + t.first);
      const __m256 sums = x_row_lanes<MT>(a.a.sums + static_cast<std::size_t>(b) * cap + t.first);
      if (t.first == 0) {
        // The weights a few blocks ahead (past this panel too: the thread's panels are contiguous),
        // so DRAM is kept busy while this block is computed. Prefetches never fault.
        const char* ahead = reinterpret_cast<const char*>(wp) + chunk0 * kPanel * 32 / (F == WeightFormat::Q4 ? 2 : 1) +
                            kPrefetchBytes;
        for (int line = 0; line < CHUNKS * kPanel * 32 / (F == WeightFormat::Q4 ? 2 : 1); line += 64) {
          _mm_prefetch(ahead + line, _MM_HINT_T0);
        }
      }
      for (int pass = 0; pass < PASSES; ++pass) {
        const __m256i rows = panel_row_lanes<MT>(pass * R);
        const __m256 sw = _mm256_permutevar8x32_ps(sw_all, rows);
        const __m256 zs = _mm256_permutevar8x32_ps(zs_all, rows);
        __m256i s32[8];
        block_dots<F, MT, CHUNKS>(wp, static_cast<int>(chunk0), pass * R,
                                  a.a.q + x_chunk(static_cast<int>(chunk0), t.first, cap),
                                  xq16 != nullptr ? xq16 + chunk0 * cap * kChunk : nullptr, cap, s32);
        acc[pass] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(s32)), _mm256_mul_ps(sw, sx), acc[pass]);
        acc[pass] = _mm256_fnmadd_ps(zs, sums, acc[pass]);
      }
    }
  }
  for (int pass = 0; pass < PASSES; ++pass) store_lanes<MT>(a, acc[pass], panel, pass * R, t);
}

// The 4 activation codes at p in every 32-bit lane (one vpbroadcastd from memory).
inline __m256i broadcast_x4_256(const std::int8_t* p) {
  std::int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Dwords 4h..4h+3 of the 32 bytes of rows 0-7 of a unit (rows at unit + 32 r) -> out[d], lane r: the
// transpose of a unit of 8 panel rows described in quantized_transposed256.inl (its kernel and the
// blocked strips kernel of quantized_strips.inl use it).
inline void transpose_half_unit(const std::uint8_t* unit, int h, __m256i (&out)[4]) {
  __m256i v[4];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    const std::uint8_t* row = unit + 32 * i + 16 * h;
    v[i] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row))),
                                   _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 4 * 32)), 1);
  }
  const __m256i lo01 = _mm256_unpacklo_epi32(v[0], v[1]);  // rows (0, 1) x dwords 0, 1 (of the half)
  const __m256i hi01 = _mm256_unpackhi_epi32(v[0], v[1]);  // dwords 2, 3
  const __m256i lo23 = _mm256_unpacklo_epi32(v[2], v[3]);  // rows (2, 3)
  const __m256i hi23 = _mm256_unpackhi_epi32(v[2], v[3]);
  out[0] = _mm256_unpacklo_epi64(lo01, lo23);
  out[1] = _mm256_unpackhi_epi64(lo01, lo23);
  out[2] = _mm256_unpacklo_epi64(hi01, hi23);
  out[3] = _mm256_unpackhi_epi64(hi01, hi23);
}

#if SDAR_X86_VNNI == 1
#include "quantized_vnni.inl"
#else
#include "quantized_transposed256.inl"
#endif
#include "quantized_strips.inl"

// ---------------------------------------------------------------- quantized weights, float activations

// The 32 weights of chunk c of a panel row as floats: (u - z) * scale = u * scale - zs.
template <WeightFormat F>
inline void dequantize_chunk(const std::uint8_t* panel_base, int c, int row, __m256 scale, __m256 zs, __m256 (&out)[4]) {
  const __m256i codes = chunk_codes<F>(panel_base, c, row);
  const __m128i lo = _mm256_castsi256_si128(codes);
  const __m128i hi = _mm256_extracti128_si256(codes, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int i = 0; i < 4; ++i) out[i] = _mm256_fmsub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[i])), scale, zs);
}

template <WeightFormat F, int MT>
void dequantized_tile(const MatmulArgs& a, int panel, const MTile& t) {
  constexpr int R = 8 / MT;
  const int K = a.w.cols;
  const int groups = K / a.w.group;
  const int chunks = a.w.group / kChunk;
  const std::size_t cap = a.row_capacity;
  const auto* wp = static_cast<const std::uint8_t*>(a.w.data) + static_cast<std::size_t>(panel) * panel_units<F>(K) * kPanel * 32;
  const PanelScales ps = panel_scales(a.w, panel, groups);
  const float* xp = a.xp + static_cast<std::size_t>(t.first) * kF32Step;
  for (int r0 = 0; r0 < kPanel; r0 += R) {
    __m256 acc[8];
    for (auto& v : acc) v = _mm256_setzero_ps();
    for (int g = 0; g < groups; ++g) {
      for (int r = 0; r < R; ++r) {
        const float s = ps.scales[static_cast<std::size_t>(g) * kPanel + r0 + r];
        const __m256 scale = _mm256_set1_ps(s);
        const __m256 zs = ps.zero_scales != nullptr ? _mm256_set1_ps(ps.zero_scales[static_cast<std::size_t>(g) * kPanel + r0 + r])
                                                    : _mm256_mul_ps(scale, ps.zero_point);
        for (int c = g * chunks; c < (g + 1) * chunks; ++c) {
          __m256 wv[4];
          dequantize_chunk<F>(wp, c, r0 + r, scale, zs, wv);
          for (int i = 0; i < 4; ++i) {
            const float* xs = xp + (static_cast<std::size_t>(c) * 4 + i) * cap * kF32Step;
            for (int m = 0; m < MT; ++m) acc[r * MT + m] = _mm256_fmadd_ps(wv[i], _mm256_loadu_ps(xs + m * kF32Step), acc[r * MT + m]);
          }
        }
      }
    }
    store_lanes<MT>(a, reduce8(acc), panel, r0, t);
  }
}

// ---------------------------------------------------------------- dispatch over panels and tiles

template <class Tile>
void run_tiles(const MatmulArgs& a, int panel_begin, int panel_end) {
  for (int p = panel_begin; p < panel_end; ++p) {
    for (int i = 0; i < a.num_tiles; ++i) {
      const MTile& t = a.tiles[i];
      switch (t.width) {
        case 1: Tile::template run<1>(a, p, t); break;
        case 2: Tile::template run<2>(a, p, t); break;
        case 4: Tile::template run<4>(a, p, t); break;
        default: Tile::template run<8>(a, p, t); break;
      }
    }
  }
}

// As run_tiles, for kernels that take two panels (16 output rows) per call; pb == pa for the last
// panel of an odd range.
template <class Pair>
void run_pairs(const MatmulArgs& a, int panel_begin, int panel_end) {
  for (int p = panel_begin; p < panel_end; p += 2) {
    const int q = p + 1 < panel_end ? p + 1 : p;
    for (int i = 0; i < a.num_tiles; ++i) {
      const MTile& t = a.tiles[i];
      switch (t.width) {
        case 1: Pair::template run<1>(a, p, q, t); break;
        case 2: Pair::template run<2>(a, p, q, t); break;
        case 4: Pair::template run<4>(a, p, q, t); break;
        default: Pair::template run<8>(a, p, q, t); break;
      }
    }
  }
}

struct F32Pair {
  template <int MT> static void run(const MatmulArgs& a, int pa, int pb, const MTile& t) { f32_pair<MT>(a, pa, pb, t); }
};
#if SDAR_X86_VNNI == 1
template <WeightFormat F, int CHUNKS>
struct QuantizedPair {
  template <int MT> static void run(const MatmulArgs& a, int pa, int pb, const MTile& t) {
    quantized_pair<F, MT, CHUNKS>(a, pa, pb, t);
  }
};
#else
template <WeightFormat F, int CHUNKS>
struct QuantizedTransposed {
  template <int MT> static void run(const MatmulArgs& a, int p, const MTile& t) { quantized_transposed<F, MT, CHUNKS>(a, p, t); }
};
#endif
template <WeightFormat F, int CHUNKS>
struct QuantizedTile {
  template <int MT> static void run(const MatmulArgs& a, int p, const MTile& t) { quantized_tile<F, MT, CHUNKS>(a, p, t); }
};
template <WeightFormat F>
struct DequantizedTile {
  template <int MT> static void run(const MatmulArgs& a, int p, const MTile& t) { dequantized_tile<F, MT>(a, p, t); }
};

void f32_kernel(const MatmulArgs& a, int pb, int pe) { run_pairs<F32Pair>(a, pb, pe); }

template <WeightFormat F>
void quantized_format(const MatmulArgs& a, int pb, int pe) {
  // From 4 rows on, the transposed kernel (one lane per output row, no horizontal sums); below, the
  // per-row kernel (see quantized_vnni.inl, quantized_transposed256.inl). Both are exact in the
  // integer sums and run the same float steps, so the choice never changes a result.
#if SDAR_X86_VNNI == 1
  if (a.rows >= kTransposedMinRows) {
    switch (a.a.block / kChunk) {
      case 1: run_pairs<QuantizedPair<F, 1>>(a, pb, pe); return;
      case 2: run_pairs<QuantizedPair<F, 2>>(a, pb, pe); return;
      default: run_pairs<QuantizedPair<F, 4>>(a, pb, pe); return;
    }
  }
#else
  if constexpr (SDAR_X86_VNNI || F == WeightFormat::Q4) {  // AVX2's 8-bit codes: the per-row kernel
    if (a.rows >= kTransposed256MinRows) {
      switch (a.a.block / kChunk) {
        case 1: run_tiles<QuantizedTransposed<F, 1>>(a, pb, pe); return;
        case 2: run_tiles<QuantizedTransposed<F, 2>>(a, pb, pe); return;
        default: run_tiles<QuantizedTransposed<F, 4>>(a, pb, pe); return;
      }
    }
  }
#endif
  switch (a.a.block / kChunk) {  // activation blocks are 32, 64 or 128 values (matmul.cpp)
    case 1: run_tiles<QuantizedTile<F, 1>>(a, pb, pe); break;
    case 2: run_tiles<QuantizedTile<F, 2>>(a, pb, pe); break;
    default: run_tiles<QuantizedTile<F, 4>>(a, pb, pe); break;
  }
}

void quantized_kernel(const MatmulArgs& a, int pb, int pe) {
  if (a.w.format == WeightFormat::Q4) {
    quantized_format<WeightFormat::Q4>(a, pb, pe);
  } else {
    quantized_format<WeightFormat::Q8>(a, pb, pe);
  }
}

void dequantized_kernel(const MatmulArgs& a, int pb, int pe) {
  if (a.w.format == WeightFormat::Q4) {
    run_tiles<DequantizedTile<WeightFormat::Q4>>(a, pb, pe);
  } else {
    run_tiles<DequantizedTile<WeightFormat::Q8>>(a, pb, pe);
  }
}

// ---------------------------------------------------------------- activation quantization

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline std::int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

void quantize_kernel(const float* x, int rows, int ldx, int cols, int block, int row_capacity, std::int8_t* q,
                     std::int16_t* q16, float* scales, float* sums) {
  const int blocks = cols / block;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i ones = _mm256_set1_epi16(1);
  const std::size_t cap = row_capacity;
  for (int m = 0; m < row_capacity; ++m) {
    // Codes of chunk c of row m at x_chunk(c, m, cap); the int16 copy chunk-major, (c * cap + m) * 32.
    std::int16_t* q16r = q16 != nullptr ? q16 + static_cast<std::size_t>(m) * kChunk : nullptr;
    if (m >= rows) {  // padding rows of the last tile: zero codes and scales
      for (int k = 0; k < cols; k += kChunk) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + x_chunk(k / kChunk, m, cap)), _mm256_setzero_si256());
        if (q16r != nullptr) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(q16r + k / kChunk * cap * kChunk), _mm256_setzero_si256());
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(q16r + k / kChunk * cap * kChunk + 16), _mm256_setzero_si256());
        }
      }
      for (int b = 0; b < blocks; ++b) {
        scales[static_cast<std::size_t>(b) * row_capacity + m] = 0.0f;
        sums[static_cast<std::size_t>(b) * row_capacity + m] = 0.0f;
      }
      continue;
    }
    const float* xr = x + static_cast<std::size_t>(m) * ldx;
    for (int b = 0; b < blocks; ++b) {
      const std::size_t si = static_cast<std::size_t>(b) * row_capacity + m;
      __m256 vmax = _mm256_setzero_ps();
      for (int k = b * block; k < (b + 1) * block; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(xr + k), abs_mask));
      const float amax = hmax(vmax);
      const float scale = amax / 127.0f;
      const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
      __m256i sum = _mm256_setzero_si256();
      for (int k = b * block; k < (b + 1) * block; k += kChunk) {
        const __m256i c0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k), inv));  // nearest, ties to even
        const __m256i c1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k + 8), inv));
        const __m256i c2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k + 16), inv));
        const __m256i c3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k + 24), inv));
        const __m256i codes =
            _mm256_permutevar8x32_epi32(_mm256_packs_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3)), order);
        const std::size_t at = k / kChunk * cap * kChunk;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + x_chunk(k / kChunk, m, cap)), codes);
        const __m256i lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(codes));
        const __m256i hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(codes, 1));
        if (q16r != nullptr) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(q16r + at), lo);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(q16r + at + 16), hi);
        }
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_add_epi16(lo, hi), ones));
      }
      scales[si] = scale;
      sums[si] = scale * static_cast<float>(hsum(sum));
    }
  }
}

// ---------------------------------------------------------------- vector primitives

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// exp(x) for float32 lanes: x = n ln2 + r (|r| <= ln2 / 2, ln2 split in two for an exact
// product), exp(r) by Cephes' degree-6 polynomial (about 1 ulp), times 2^n built in the exponent
// field. Below -87.3 the result is 0 (the float32 range ends there), above 88.7 it saturates.
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.72283f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  // 2^n: n in [-126, 128]; 2^128 only where x saturated, where y * 2^127 * 2 overflows to inf anyway.
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
  const __m256 scaled = _mm256_mul_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), _mm256_set1_ps(2.0f));
  return _mm256_andnot_ps(underflow, scaled);
}

inline __m256i first_lanes(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }

float vec_dot(const float* a, const float* b, int n) {
  __m256 s0 = _mm256_setzero_ps();
  __m256 s1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  if (i < n) {
    const __m256i m = first_lanes(n - i);
    s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
  }
  return hsum(_mm256_add_ps(s0, s1));
}

#include "attention_x86.inl"

// The exps and their sum as the scalar table's loop would take them lane by lane: 8 partial sums,
// then hsum; the maximum and the scaling are exact in any order.
void vec_softmax(float* v, int n) {
  __m256 top8 = _mm256_set1_ps(-HUGE_VALF);
  int i = 0;
  for (; i + 8 <= n; i += 8) top8 = _mm256_max_ps(top8, _mm256_loadu_ps(v + i));
  float top = hmax(top8);
  for (; i < n; ++i) top = v[i] > top ? v[i] : top;
  const __m256 sh = _mm256_set1_ps(top);
  __m256 sum = _mm256_setzero_ps();
  i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(v + i), sh));
    _mm256_storeu_ps(v + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (i < n) {
    const __m256i m = first_lanes(n - i);
    const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(v + i, m), sh)), _mm256_castsi256_ps(m));
    _mm256_maskstore_ps(v + i, m, e);
    sum = _mm256_add_ps(sum, e);
  }
  const float inv = 1.0f / hsum(sum);
  const __m256 inv8 = _mm256_set1_ps(inv);
  i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, _mm256_mul_ps(_mm256_loadu_ps(v + i), inv8));
  for (; i < n; ++i) v[i] *= inv;
}

void vec_silu_mul(const float* gate, const float* up, float* out, int n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 sig = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_xor_ps(g, sign))));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(sig, _mm256_loadu_ps(up + i)));
  }
  if (i < n) {
    const __m256i m = first_lanes(n - i);
    const __m256 g = _mm256_maskload_ps(gate + i, m);
    const __m256 sig = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_xor_ps(g, sign))));
    _mm256_maskstore_ps(out + i, m, _mm256_mul_ps(sig, _mm256_maskload_ps(up + i, m)));
  }
}

float vec_sum_squares(const float* x, int n) { return vec_dot(x, x, n); }

constexpr VectorKernels kVectorKernels{vec_dots, vec_weighted_sum, vec_softmax, vec_silu_mul, vec_sum_squares};

}  // namespace
}  // namespace sdar::cpu
