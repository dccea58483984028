// Quantized weights x int8 activations on AVX-512 VNNI (included by kernels_x86.inl when
// SDAR_X86_VNNI is 1; uses its helpers).
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
// 8 vectors of 2 rows x 8 dwords; three rounds of two-source dword permutes (8 each) turn them into
// 8 vectors of 16 rows x 1 dword. Q4 codes stay packed through the transpose (half the permutes):
// a dword holds codes k..k+3 in its low nibbles and k+32..k+35 in its high ones. The low nibbles are
// masked out as they are; the high ones are masked in place, so their products come out 16 times too
// large and are shifted back once per block (exact: the sum is a multiple of 16, and at most
// 16 * 15 * 127 * 128 per block, far from overflowing).

// Lane tables of the three permute rounds (sources a = lanes 0-15, b = 16-31):
//   round 1: 2 rows x 8 dwords (two vectors) -> 4 rows x 4 dwords, lane dw * 4 + row;
//   round 2: 4 rows x 4 dwords (two)          -> 8 rows x 2 dwords, lane dw * 8 + row;
//   round 3: 8 rows x 2 dwords (two)          -> 16 rows x 1 dword, lane row.
// Each round has two tables: the lower and the upper half of the dwords.
struct TransposeLanes {
  __m512i r1[2], r2[2], r3[2];
};

inline TransposeLanes transpose_lanes() {
  TransposeLanes t;
  t.r1[0] = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27);
  t.r1[1] = _mm512_setr_epi32(4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31);
  t.r2[0] = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  t.r2[1] = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  t.r3[0] = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  t.r3[1] = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  return t;
}

// The 256 bytes of one unit of panel a (rows 0-7) and of panel b (rows 8-15) -> out[d], lane r =
// dword d of row r's 32 bytes.
inline void transpose_unit(const std::uint8_t* a, const std::uint8_t* b, const TransposeLanes& t, __m512i (&out)[8]) {
  __m512i in[8];
  for (int i = 0; i < 4; ++i) {
    in[i] = _mm512_loadu_si512(a + 64 * i);
    in[4 + i] = _mm512_loadu_si512(b + 64 * i);
  }
  __m512i q[8];  // round 1: q[2 * quad + half], rows 4 quad.., dwords 4 half..
  for (int quad = 0; quad < 4; ++quad) {
    for (int h = 0; h < 2; ++h) q[2 * quad + h] = _mm512_permutex2var_epi32(in[2 * quad], t.r1[h], in[2 * quad + 1]);
  }
  __m512i o[8];  // round 2: o[4 * octet + pair], rows 8 octet.., dwords 2 pair..
  for (int octet = 0; octet < 2; ++octet) {
    for (int pair = 0; pair < 4; ++pair) {
      o[4 * octet + pair] = _mm512_permutex2var_epi32(q[4 * octet + pair / 2], t.r2[pair % 2], q[4 * octet + 2 + pair / 2]);
    }
  }
  for (int d = 0; d < 8; ++d) out[d] = _mm512_permutex2var_epi32(o[d / 2], t.r3[d % 2], o[4 + d / 2]);
}

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
  const float* sa = a.w.scales + static_cast<std::size_t>(pa) * groups * kPanel;
  const float* sb = a.w.scales + static_cast<std::size_t>(pb) * groups * kPanel;
  const float* za = a.w.symmetric ? nullptr : a.w.zero_scales + static_cast<std::size_t>(pa) * groups * kPanel;
  const float* zb = a.w.symmetric ? nullptr : a.w.zero_scales + static_cast<std::size_t>(pb) * groups * kPanel;
  const __m512 zero_point = _mm512_set1_ps(kQ4 ? 8.0f : 128.0f);
  const TransposeLanes lanes = transpose_lanes();
  const std::int8_t* xq = a.a.q + static_cast<std::size_t>(t.first) * kXRun;
  const bool prefetch = t.first == 0;  // the first tile streams the panels; the others find them in cache
  const auto pair16 = [](const float* lo, const float* hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(lo))),
                                               _mm256_castps_pd(_mm256_loadu_ps(hi)), 1));
  };
  // Transposes unit u (Q4: chunks 2u, 2u + 1; Q8: chunk u) of both panels.
  const auto load_unit = [&](int u, __m512i(&codes)[8]) {
    const std::size_t at = static_cast<std::size_t>(u) * kUnitBytes;
    if (prefetch) {
      // A few KB ahead in both panels (past them too: a thread's panels are contiguous), so DRAM
      // streams while this unit is computed. Prefetches never fault.
      for (std::size_t line = 0; line < kUnitBytes; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(wa + at + line) + kPrefetchBytes, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(wb + at + line) + kPrefetchBytes, _MM_HINT_T0);
      }
    }
    transpose_unit(wa + at, wb + at, lanes, codes);
  };
  // x rows of the tile at chunk c (x_chunk layout).
  const auto x_at = [&](int c) { return xq + (static_cast<std::size_t>(c / 2) * cap) * kXRun + (c % 2) * kChunk; };

  __m512 acc[MT];
  for (auto& v : acc) v = _mm512_setzero_ps();
  __m512i codes[8];
  for (int g = 0; g < groups; ++g) {
    const std::size_t gi = static_cast<std::size_t>(g) * kPanel;
    const __m512 sw = pair16(sa + gi, sb + gi);
    const __m512 zs = za != nullptr ? pair16(za + gi, zb + gi) : _mm512_mul_ps(sw, zero_point);
    for (int bg = 0; bg < blocks_per_group; ++bg) {
      const int b = g * blocks_per_group + bg;
      BlockDots<MT> dots;
      for (auto& row : dots.v) {
        for (auto& v : row) v = _mm512_setzero_si512();
      }
      if constexpr (kQ4 && CHUNKS == 1) {  // half a unit per block
        if (b % 2 == 0) {
          load_unit(b / 2, codes);
          unit_dots<MT, 0, -2>(codes, x_at(b), nullptr, dots);
        } else {
          unit_dots<MT, 1, -2>(codes, x_at(b), nullptr, dots);
        }
      } else if constexpr (kQ4) {
        for (int u = b * CHUNKS / 2; u < (b + 1) * CHUNKS / 2; ++u) {
          load_unit(u, codes);
          unit_dots<MT, 0, 1>(codes, x_at(2 * u), x_at(2 * u + 1), dots);
        }
      } else {
        for (int c = b * CHUNKS; c < (b + 1) * CHUNKS; ++c) {
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
    _mm512_mask_storeu_ps(a.y + static_cast<std::size_t>(t.first + m) * a.ldy + n0, keep, acc[m]);
  }
}

template <WeightFormat F, int CHUNKS>
void quantized_pairs(const MatmulArgs& a, int panel_begin, int panel_end) {
  for (int p = panel_begin; p < panel_end; p += 2) {
    const int q = p + 1 < panel_end ? p + 1 : p;
    for (int i = 0; i < a.num_tiles; ++i) {
      const MTile& t = a.tiles[i];
      switch (t.width) {
        case 1: quantized_pair<F, 1, CHUNKS>(a, p, q, t); break;
        case 2: quantized_pair<F, 2, CHUNKS>(a, p, q, t); break;
        case 4: quantized_pair<F, 4, CHUNKS>(a, p, q, t); break;
        default: quantized_pair<F, 8, CHUNKS>(a, p, q, t); break;
      }
    }
  }
}
