// Quantized weights x int8 activations on AVX-512 VNNI, for 4 or more rows of x (included by
// kernels_x86.inl when SDAR_X86_VNNI is 1; uses its helpers; quantized_format picks it).
//
// One 512-bit lane per output row, two panels (16 rows) at a time: the codes are transposed in
// registers so that lane r of a vector holds 4 consecutive codes of row r, and vpdpbusd multiplies
// them by 4 activation codes broadcast to every lane. Each lane then accumulates its own row's
// block dot product: no horizontal sums at all (summing 16 int32 partials per row, block and x row
// cost more than the dot products themselves), and a row's float accumulator is one lane, stored
// with the 15 others in one instruction. The integer dot products are exact and the float steps per
// block are the ones every table runs, so the results stay bit-identical to the other tables.
//
// The transpose: a unit (Q4: 64 codes of a row in 32 bytes; Q8: a chunk of 32 codes) of 16 rows is
// 8 vectors of 2 rows x 8 dwords; two rounds of in-lane unpacks and one of 128-bit lane shuffles
// turn them into 8 vectors of 16 rows x 1 dword. Q4 codes stay packed through the transpose (half
// the shuffles): a dword holds codes k..k+3 in its low nibbles and k+32..k+35 in its high ones. The
// low nibbles are masked out as they are; the high ones are masked in place, so their products come
// out 16 times too large and are shifted back once per block (exact: the sum is a multiple of 16,
// and at most 16 * 15 * 127 * 128 per block, far from overflowing).

// The fewest rows of x for which quantized_format picks this kernel: with 1 or 2 rows the per-row
// kernel measured as fast (1 row) or faster (2 rows), with 4 and more this one is faster.
constexpr int kTransposedMinRows = 4;

// The 256 bytes of one unit of panel a (rows 0-7) and of panel b (rows 8-15) -> out[d], one dword
// (4 codes) of each of the 16 rows: dword d of its 32 bytes. In-lane unpacks do the first two rounds
// (they issue beside vpdpbusd; a two-source permute competes with it for its pipe); after them a
// 128-bit lane holds one dword of 4 even or 4 odd rows, and the last round picks 128-bit lanes.
// So the lanes of out[d] hold the rows in the order kRowOfLane (the scales are read in that order,
// the results stored back in row order).
inline void transpose_unit(const std::uint8_t* a, const std::uint8_t* b, __m512i (&out)[8]) {
  __m512i half[2][4];  // [panel][d]: 128-bit lanes (even rows dword d, even d + 4, odd d, odd d + 4)
#pragma GCC unroll 2
  for (int p = 0; p < 2; ++p) {
    const std::uint8_t* src = p == 0 ? a : b;
    // in[i]: rows 2i, 2i + 1 of the panel, 128-bit lanes (row 2i dwords 0-3, 4-7, row 2i + 1 0-3, 4-7).
    const __m512i in0 = _mm512_loadu_si512(src);
    const __m512i in1 = _mm512_loadu_si512(src + 64);
    const __m512i in2 = _mm512_loadu_si512(src + 128);
    const __m512i in3 = _mm512_loadu_si512(src + 192);
    const __m512i lo01 = _mm512_unpacklo_epi32(in0, in1);  // rows (0, 2) x dwords 0, 1 per lane
    const __m512i hi01 = _mm512_unpackhi_epi32(in0, in1);  // dwords 2, 3
    const __m512i lo23 = _mm512_unpacklo_epi32(in2, in3);  // rows (4, 6)
    const __m512i hi23 = _mm512_unpackhi_epi32(in2, in3);
    half[p][0] = _mm512_unpacklo_epi64(lo01, lo23);  // rows (0, 2, 4, 6) x dword 0
    half[p][1] = _mm512_unpackhi_epi64(lo01, lo23);
    half[p][2] = _mm512_unpacklo_epi64(hi01, hi23);
    half[p][3] = _mm512_unpackhi_epi64(hi01, hi23);
  }
#pragma GCC unroll 4
  for (int d = 0; d < 4; ++d) {
    out[d] = _mm512_shuffle_i64x2(half[0][d], half[1][d], 0x88);      // 128-bit lanes 0, 2 of each
    out[d + 4] = _mm512_shuffle_i64x2(half[0][d], half[1][d], 0xDD);  // lanes 1, 3
  }
}

// How far ahead of each of its two streams the first tile prefetches. Measured on a 2-core Zen 4
// at the 0.6B shape (int4, alternating runs): 6 KB made the 4- and 8-row forwards ~6% faster than
// 2 KB, 12-24 KB no better than 2 KB, and none at all ~40% slower.
#ifndef SDAR_PAIR_PREFETCH
#define SDAR_PAIR_PREFETCH 6144
#endif
constexpr std::size_t kPairPrefetchBytes = SDAR_PAIR_PREFETCH;

// Lane j of a transposed vector holds row kRowOfLane[j] of the two panels; kLaneOfRow inverts it.
inline __m512i row_of_lane() { return _mm512_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15); }
inline __m512i lane_of_row() { return _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15); }

inline __m512i broadcast_x4(const std::int8_t* p) {
  std::int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// Integer sums of one tile against 16 rows: SLOTS int32 vectors per x row, independent vpdpbusd
// chains (8 per tile: a chain's next vpdpbusd waits for the last one's result), added at the end of
// the block. Q4 with two or more slots keeps its high nibbles in place in the upper half of the
// slots (16x products); with one slot (the 8-row tile, whose registers hold its 8 float
// accumulators) it shifts them down first.
template <int MT>
struct BlockDots {
  static constexpr int kSlots = 8 / MT;
  __m512i v[MT][kSlots];
};

// The weights of codes[d] (lane: 4 codes of a row) for HALF: -1 all 8 bits (Q8), 0 the low nibbles,
// 1 the high nibbles (in place with two or more slots, else shifted down).
template <int HALF, int SLOTS>
inline __m512i half_codes(__m512i codes) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  if constexpr (HALF == 0) return _mm512_and_si512(codes, low4);
  if constexpr (HALF == 1 && SLOTS >= 2) return _mm512_andnot_si512(low4, codes);
  if constexpr (HALF == 1 && SLOTS == 1) return _mm512_and_si512(_mm512_srli_epi16(codes, 4), low4);
  return codes;
}

// The slot of HALF's products of codes[d]: Q8 round robin, Q4 the low nibbles in the lower half of
// the slots and the high ones in the upper half.
template <int HALF, int SLOTS>
constexpr int dot_slot(int d) {
  if constexpr (HALF < 0) return d % SLOTS;
  if constexpr (SLOTS == 1) return 0;
  return HALF * (SLOTS / 2) + d % (SLOTS / 2);
}

// Adds the products of the 8 vectors of codes with the x rows at x0 (HALF0) and x1 (HALF1; none if
// HALF1 is -2), row m at x + 64 m (the x_chunk layout of this table). Both halves of a dword in the
// same step keep twice the chains busy.
template <int MT, int HALF0, int HALF1>
inline void unit_dots(const __m512i (&codes)[8], const std::int8_t* x0, const std::int8_t* x1, BlockDots<MT>& dots) {
  constexpr int S = BlockDots<MT>::kSlots;
#pragma GCC unroll 8
  for (int d = 0; d < 8; ++d) {
    const __m512i w0 = half_codes<HALF0, S>(codes[d]);
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      __m512i& v = dots.v[m][dot_slot<HALF0, S>(d)];
      v = _mm512_dpbusd_epi32(v, w0, broadcast_x4(x0 + 64 * m + 4 * d));
    }
    if constexpr (HALF1 != -2) {
      const __m512i w1 = half_codes<HALF1, S>(codes[d]);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        __m512i& v = dots.v[m][dot_slot<HALF1, S>(d)];
        v = _mm512_dpbusd_epi32(v, w1, broadcast_x4(x1 + 64 * m + 4 * d));
      }
    }
  }
}

// Row m's block dot product from its slots.
template <bool Q4, int MT>
inline __m512i block_dot(const BlockDots<MT>& dots, int m) {
  constexpr int S = BlockDots<MT>::kSlots;
  if constexpr (Q4 && S >= 2) {
    __m512i low = dots.v[m][0];
    __m512i high = dots.v[m][S / 2];
    for (int s = 1; s < S / 2; ++s) {
      low = _mm512_add_epi32(low, dots.v[m][s]);
      high = _mm512_add_epi32(high, dots.v[m][S / 2 + s]);
    }
    return _mm512_add_epi32(low, _mm512_srai_epi32(high, 4));
  } else {
    __m512i sum = dots.v[m][0];
    for (int s = 1; s < S; ++s) sum = _mm512_add_epi32(sum, dots.v[m][s]);
    return sum;
  }
}

// Panels pa and pb (pb == pa: one panel, lanes 8-15 dropped) for the MT rows of tile t.
template <WeightFormat F, int MT, int CHUNKS>
void quantized_pair(const MatmulArgs& a, int pa, int pb, const MTile& t) {
  constexpr bool kQ4 = F == WeightFormat::Q4;
  constexpr std::size_t kUnitBytes = kPanel * 32;
  const int K = a.w.cols;
  const int groups = K / a.w.group;
  const int blocks_per_group = a.w.group / (CHUNKS * kChunk);
  const std::size_t cap = a.a.row_capacity;
  const std::size_t panel_bytes = panel_units<F>(K) * kUnitBytes;
  const auto* base = static_cast<const std::uint8_t*>(a.w.data);
  const std::uint8_t* wa = base + static_cast<std::size_t>(pa) * panel_bytes;
  const std::uint8_t* wb = base + static_cast<std::size_t>(pb) * panel_bytes;
  const PanelScales psa = panel_scales(a.w, pa, groups);
  const PanelScales psb = panel_scales(a.w, pb, groups);
  const __m512 zero_point = _mm512_set1_ps(kQ4 ? 8.0f : 128.0f);
  const __m512i row_order = row_of_lane();
  const std::int8_t* xq = a.a.q + static_cast<std::size_t>(t.first) * kXRun;
  const bool prefetch = t.first == 0;  // the first tile streams the panels; the others find them in cache
  // The 8 values of panel a then the 8 of panel b, in the lane order of the transposed codes.
  const auto pair16 = [row_order](const float* lo, const float* hi) {
    const __m512 rows = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(lo))),
                                                            _mm256_castps_pd(_mm256_loadu_ps(hi)), 1));
    return _mm512_permutexvar_ps(row_order, rows);
  };
  // Transposes unit u (Q4: chunks 2u, 2u + 1; Q8: chunk u) of both panels.
  const auto load_unit = [&](int u, __m512i(&codes)[8]) {
    const std::size_t at = static_cast<std::size_t>(u) * kUnitBytes;
    if (prefetch) {
      // A few KB ahead in both panels, so DRAM streams while this unit is computed. Past the end of
      // a panel the address skips the other panel of the pair and lands in the next pair (a thread's
      // panels are contiguous, pair after pair); a distance over a panel's size lands further into
      // it. Prefetches never fault.
      const std::size_t ahead = at + pair_prefetch_offset(at, kPairPrefetchBytes, panel_bytes);
#pragma GCC unroll 4
      for (std::size_t line = 0; line < kUnitBytes; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(wa + ahead + line), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(wb + ahead + line), _MM_HINT_T0);
      }
      if constexpr (MT <= 4) {  // also far ahead into L2 (kFarPrefetchBytes)
        const std::size_t far = at + pair_prefetch_offset(at, kFarPrefetchBytes, panel_bytes);
#pragma GCC unroll 4
        for (std::size_t line = 0; line < kUnitBytes; line += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(wa + far + line), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(wb + far + line), _MM_HINT_T1);
        }
      }
    }
    transpose_unit(wa + at, wb + at, codes);
  };
  // x rows of the tile at chunk c (x_chunk layout).
  const auto x_at = [&](int c) { return xq + (static_cast<std::size_t>(c / 2) * cap) * kXRun + (c % 2) * kChunk; };

  __m512 acc[MT];
  for (auto& v : acc) v = _mm512_setzero_ps();
  __m512i half_unit_codes[8];  // Q4 with blocks of one chunk: a unit's codes serve two blocks
  for (int g = 0; g < groups; ++g) {
    const std::size_t gi = static_cast<std::size_t>(g) * kPanel;
    const __m512 sw = pair16(psa.scales + gi, psb.scales + gi);
    const __m512 zs = psa.zero_scales != nullptr ? pair16(psa.zero_scales + gi, psb.zero_scales + gi)
                                                 : _mm512_mul_ps(sw, zero_point);
    for (int bg = 0; bg < blocks_per_group; ++bg) {
      const int b = g * blocks_per_group + bg;
      BlockDots<MT> dots;
      // Unrolled, so that the sums stay in registers whatever the optimization level: at -O2 GCC 12
      // kept this loop, put the sums on the stack, and the kernel ran 1.5x (4 rows) and 1.15x
      // (8 rows) slower with the weights in cache (-O3, the release build, unrolls it anyway).
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
#pragma GCC unroll 8
        for (int slot = 0; slot < BlockDots<MT>::kSlots; ++slot) dots.v[m][slot] = _mm512_setzero_si512();
      }
      if constexpr (kQ4 && CHUNKS == 1) {  // half a unit per block
        if (b % 2 == 0) {
          load_unit(b / 2, half_unit_codes);
          unit_dots<MT, 0, -2>(half_unit_codes, x_at(b), nullptr, dots);
        } else {
          unit_dots<MT, 1, -2>(half_unit_codes, x_at(b), nullptr, dots);
        }
      } else if constexpr (kQ4) {
#pragma GCC unroll 2
        for (int u = b * CHUNKS / 2; u < (b + 1) * CHUNKS / 2; ++u) {
          __m512i codes[8];
          load_unit(u, codes);
          unit_dots<MT, 0, 1>(codes, x_at(2 * u), x_at(2 * u + 1), dots);
        }
      } else {
        for (int c = b * CHUNKS; c < (b + 1) * CHUNKS; ++c) {
          __m512i codes[8];
          load_unit(c, codes);
          unit_dots<MT, -1, -2>(codes, x_at(c), nullptr, dots);
        }
      }
      const float* sx = a.a.scales + static_cast<std::size_t>(b) * cap + t.first;
      const float* sums = a.a.sums + static_cast<std::size_t>(b) * cap + t.first;
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        const __m512i dot = block_dot<kQ4>(dots, m);
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sw, _mm512_set1_ps(sx[m])), acc[m]);
        acc[m] = _mm512_fnmadd_ps(zs, _mm512_set1_ps(sums[m]), acc[m]);
      }
    }
  }
  const int n0 = pa * kPanel;
  const int width = pb == pa ? kPanel : 2 * kPanel;
  const int valid = a.w.rows - n0 < width ? a.w.rows - n0 : width;
  const __mmask16 keep = static_cast<__mmask16>((1u << valid) - 1u);
  for (int m = 0; m < MT && t.first + m < a.rows; ++m) {
    _mm512_mask_storeu_ps(a.y + static_cast<std::size_t>(t.first + m) * a.ldy + n0, keep,
                          _mm512_permutexvar_ps(lane_of_row(), acc[m]));
  }
}
