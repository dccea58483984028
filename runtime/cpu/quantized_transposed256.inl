// Quantized weights x int8 activations on 256-bit vectors, for 4 or more rows of x: the AVX2 table
// (4-bit codes) and the AVX-VNNI table (4- and 8-bit codes). Included by kernels_x86.inl when
// SDAR_X86_VNNI is 0 or 2; uses its helpers; quantized_format picks it.
//
// One 32-bit lane per output row of a panel: the codes of a unit of 8 rows are transposed so that
// lane r of a vector holds 4 consecutive codes of row r, and those are multiplied by 4 activation
// codes broadcast to every lane. Each lane accumulates its own row's block dot product, so there
// are no horizontal sums (the per-row kernel sums 8 int32 partials per output, block and x row), and
// a row's float accumulator is one lane, the 8 stored with one vector. The integer sums are exact
// and the float steps per block are the ones every table runs: the results stay bit-identical.
//
// The dot step of 4 codes:
//   AVX-VNNI: vpdpbusd (VEX) adds the four u8 x s8 products into the int32 lane.
//   AVX2 (4-bit codes only): vpmaddubsw multiplies them into two int16 pair sums, each at most
//     2 * 15 * 127 = 3810, so 8 steps (30480) fit an int16 lane; vpmaddwd by ones then widens the
//     pairs into the int32 lane once per 8 steps (half a unit: 4 dwords, low and high nibbles).
//     8-bit codes (up to 255 * 127 * 2 per pair) would saturate vpmaddubsw: the AVX2 table keeps
//     its per-row kernel (vpmaddwd on int16) for them.
//
// The transpose of a unit (Q4: 64 codes of a row in 32 bytes; Q8: a chunk of 32 codes), one half
// (16 bytes of each row, dwords 4h..4h+3) at a time: 128-bit loads put row i in the low lane and
// row i + 4 in the high lane of v[i], and two rounds of in-lane unpacks leave dword d of rows 0-7
// in lanes 0-7 of out[d], in row order (no permutation of scales or results). Q4 codes stay packed
// through it: a dword holds codes k..k+3 in its low nibbles and k+32..k+35 in its high ones.

// The fewest rows of x for which quantized_format picks this kernel (as the AVX-512 VNNI table's
// transposed kernel): with 1 or 2 rows too few x rows would share each unit's transpose.
constexpr int kTransposed256MinRows = 4;

// The u8 codes of a transposed vector: NIBBLE 0 the low nibbles, 1 the high ones, -1 all 8 bits (Q8).
template <int NIBBLE>
inline __m256i nibble_codes(__m256i codes) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  if constexpr (NIBBLE == 0) return _mm256_and_si256(codes, low4);
  if constexpr (NIBBLE == 1) return _mm256_and_si256(_mm256_srli_epi16(codes, 4), low4);
  return codes;
}

// For every x row m: sum[m] (lane r: panel row r) += the products of the STEPS code vectors w[s]
// with the 4 activation codes at xs[s] + kXRun m, broadcast. x rows outermost: each row's steps are
// one chain, with only the codes and that chain live, whatever MT.
template <int MT, int STEPS>
inline void dot_steps(const __m256i (&w)[STEPS], const std::int8_t* const (&xs)[STEPS], __m256i (&sum)[MT]) {
  static_assert(STEPS % 2 == 0, "steps come in pairs");
#if !SDAR_X86_VNNI
  static_assert(STEPS <= 8, "more than 8 steps of 4-bit codes could overflow the int16 pair sums");
  const __m256i ones = _mm256_set1_epi16(1);
#endif
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m) {
#if SDAR_X86_VNNI
    // Two chains per row (even and odd steps): a vpdpbusd waits ~5 cycles for the last one's result,
    // and with one chain per row a 4-row tile could not keep two of them issuing per cycle.
    __m256i odd = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int s = 0; s < STEPS; s += 2) {
      sum[m] = x86_dpbusd(sum[m], w[s], broadcast_x4_256(xs[s] + kXRun * m));
      odd = x86_dpbusd(odd, w[s + 1], broadcast_x4_256(xs[s + 1] + kXRun * m));
    }
    sum[m] = _mm256_add_epi32(sum[m], odd);
#else
    // The int16 pair sums are added with saturation though they never reach it (at most 8 * 3810):
    // a saturating add is not associative, so the compiler keeps the chain as written instead of
    // computing every product first (a tree of live products spilled to the stack: 1.2x the
    // instructions of the per-row kernel at 4 and 8 rows, before this).
    __m256i pairs = _mm256_maddubs_epi16(w[0], broadcast_x4_256(xs[0] + kXRun * m));
#pragma GCC unroll 8
    for (int s = 1; s < STEPS; ++s) pairs = _mm256_adds_epi16(pairs, _mm256_maddubs_epi16(w[s], broadcast_x4_256(xs[s] + kXRun * m)));
    sum[m] = _mm256_add_epi32(sum[m], _mm256_madd_epi16(pairs, ones));
#endif
  }
}

// One panel for the MT rows of tile t.
template <WeightFormat F, int MT, int CHUNKS>
void quantized_transposed(const MatmulArgs& a, int panel, const MTile& t) {
  constexpr bool kQ4 = F == WeightFormat::Q4;
  static_assert(SDAR_X86_VNNI || kQ4, "AVX2 has no exact 8-bit-code step for this kernel");
  constexpr std::size_t kUnitBytes = kPanel * 32;
  const int K = a.w.cols;
  const int groups = K / a.w.group;
  const int blocks_per_group = a.w.group / (CHUNKS * kChunk);
  const std::size_t cap = a.a.row_capacity;
  const std::size_t panel_bytes = panel_units<F>(K) * kUnitBytes;
  const auto* wp = static_cast<const std::uint8_t*>(a.w.data) + static_cast<std::size_t>(panel) * panel_bytes;
  const PanelScales ps = panel_scales(a.w, panel, groups);
  const std::int8_t* xq = a.a.q + static_cast<std::size_t>(t.first) * kXRun;
  const bool prefetch = t.first == 0;  // the first tile streams the panel; the others find it in cache
  // The unit at `at` bytes into the panel, prefetched ahead when this tile streams (a thread's panels
  // are contiguous, so past this panel's end the addresses land in its next one; prefetches never
  // fault): near into L1, and for tiles of up to 4 rows, which compute less per byte, far into L2
  // too (as the other tables' kernels).
  const auto unit_at = [&](std::size_t at) {
    if (prefetch) {
#pragma GCC unroll 4
      for (std::size_t line = 0; line < kUnitBytes; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(wp + at + kPrefetchBytes + line), _MM_HINT_T0);
        if constexpr (MT <= 4) _mm_prefetch(reinterpret_cast<const char*>(wp + at + kFarPrefetchBytes + line), _MM_HINT_T1);
      }
    }
    return wp + at;
  };
  // Chunk c of the tile's first x row (x_chunk layout, runs of one chunk in these tables).
  const auto x_at = [&](int c) { return xq + static_cast<std::size_t>(c) * cap * kXRun; };

  __m256 acc[MT];
  for (auto& v : acc) v = _mm256_setzero_ps();
  for (int g = 0; g < groups; ++g) {
    const __m256 sw = _mm256_loadu_ps(ps.scales + static_cast<std::size_t>(g) * kPanel);
    const __m256 zs = ps.zero_scales != nullptr ? _mm256_loadu_ps(ps.zero_scales + static_cast<std::size_t>(g) * kPanel)
                                                : _mm256_mul_ps(sw, ps.zero_point);
    for (int bg = 0; bg < blocks_per_group; ++bg) {
      const int b = g * blocks_per_group + bg;
      __m256i sum[MT];  // the block's dot products, one lane per panel row
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) sum[m] = _mm256_setzero_si256();
      if constexpr (kQ4 && CHUNKS == 1) {  // half a unit's codes per block: its low or high nibbles
        const std::uint8_t* unit = unit_at(static_cast<std::size_t>(b / 2) * kUnitBytes);
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          __m256i codes[4];
          transpose_half_unit(unit, h, codes);
          __m256i w[4];
          const std::int8_t* xs[4];
#pragma GCC unroll 4
          for (int d = 0; d < 4; ++d) {
            w[d] = b % 2 == 0 ? nibble_codes<0>(codes[d]) : nibble_codes<1>(codes[d]);
            xs[d] = x_at(b) + 4 * (4 * h + d);
          }
          dot_steps<MT, 4>(w, xs, sum);
        }
      } else if constexpr (kQ4) {  // whole units: chunks 2u (low nibbles) and 2u + 1 (high)
#pragma GCC unroll 2
        for (int u = b * CHUNKS / 2; u < (b + 1) * CHUNKS / 2; ++u) {
          const std::uint8_t* unit = unit_at(static_cast<std::size_t>(u) * kUnitBytes);
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            __m256i codes[4];
            transpose_half_unit(unit, h, codes);
            __m256i w[8];
            const std::int8_t* xs[8];
#pragma GCC unroll 4
            for (int d = 0; d < 4; ++d) {
              w[d] = nibble_codes<0>(codes[d]);
              w[4 + d] = nibble_codes<1>(codes[d]);
              xs[d] = x_at(2 * u) + 4 * (4 * h + d);
              xs[4 + d] = x_at(2 * u + 1) + 4 * (4 * h + d);
            }
            dot_steps<MT, 8>(w, xs, sum);
          }
        }
      } else {  // Q8 (AVX-VNNI): a unit is a chunk
        for (int c = b * CHUNKS; c < (b + 1) * CHUNKS; ++c) {
          const std::uint8_t* unit = unit_at(static_cast<std::size_t>(c) * kUnitBytes);
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            __m256i codes[4];
            transpose_half_unit(unit, h, codes);
            const std::int8_t* xs[4];
#pragma GCC unroll 4
            for (int d = 0; d < 4; ++d) xs[d] = x_at(c) + 4 * (4 * h + d);
            dot_steps<MT, 4>(codes, xs, sum);
          }
        }
      }
      const float* sx = a.a.scales + static_cast<std::size_t>(b) * cap + t.first;
      const float* sums = a.a.sums + static_cast<std::size_t>(b) * cap + t.first;
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[m]), _mm256_mul_ps(sw, _mm256_set1_ps(sx[m])), acc[m]);
        acc[m] = _mm256_fnmadd_ps(zs, _mm256_set1_ps(sums[m]), acc[m]);
      }
    }
  }
  const int n0 = panel * kPanel;
  const int valid = a.w.rows - n0 < kPanel ? a.w.rows - n0 : kPanel;
  alignas(32) float out[kPanel];
  for (int m = 0; m < MT && t.first + m < a.rows; ++m) {
    float* y = a.y + static_cast<std::size_t>(t.first + m) * a.ldy + n0;
    if (valid == kPanel) {
      _mm256_storeu_ps(y, acc[m]);
    } else {
      _mm256_store_ps(out, acc[m]);
      for (int j = 0; j < valid; ++j) y[j] = out[j];
    }
  }
}
