// The blocked kernel of quantized weights (Q4, Q8) against the int8 activations of many rows (a
// prompt's prefill; kernels.h: QuantizedStripKernel): the AVX-VNNI table on 256-bit vpdpbusd, the
// AVX-512 VNNI table (on CPUs without AMX) on 512-bit vpdpbusd, and the AVX2 table, 4-bit codes only,
// on vpmaddubsw pairs. Included by kernels_x86.inl; uses its helpers.
//
// The small-M kernels transpose and mask a panel's codes again for every tile of 8 rows of x (at
// 256 rows, 32 times per call) and broadcast one activation dword per vpdpbusd. Here the codes of a
// strip of two vectors' columns (16 output columns on 256-bit vectors, 32 on 512-bit) are unpacked
// once per call into the scratch in the instruction's layout, [K / 4 steps][strip columns][4 codes],
// each code a byte (Q4 nibbles spread). Then tiles of rows run over the whole strip (6 on AVX-VNNI, 12
// on AVX-512, 4 on AVX2: the lane types below say why): per step of 4 codes, two loads of weights
// and one broadcast of x per row feed two products per row into the tile's int32 sums (on AVX-VNNI,
// 12 independent vpdpbusd chains keep both of its pipes busy through the instruction's latency).
//
// Bit-identical to every kernel table: per activation block the integer sum(u * x) is exact in any
// order, and the float steps are the reference's (kernels.h), blocks in order from 0.0f:
//   acc = fma(float(dot), sw * sx, acc);  acc = fma(-zero_scale, sum_x, acc).
// The float sums of a tile wait in memory between blocks (they do not fit in registers beside the
// integer ones) and go to y once the tile is done.

// sums[m][v] += the products of one chunk (8 steps of 4 codes; the strip's codes at w) with rows
// m < MT of x (row m's chunk at x + kXRun m), one V::dot (vpdpbusd) per product vector.
template <class V, int MT>
inline void vnni_chunk_dots(const std::uint8_t* w, const std::int8_t* x, typename V::Int (&sums)[MT][2]) {
  constexpr std::size_t kVectorBytes = 32 * V::kPanels;
#pragma GCC unroll 8
  for (int s = 0; s < kChunk / 4; ++s) {
    const typename V::Int w0 = V::load_codes(w + 2 * kVectorBytes * s);
    const typename V::Int w1 = V::load_codes(w + 2 * kVectorBytes * s + kVectorBytes);
#pragma GCC unroll 12
    for (int m = 0; m < MT; ++m) {
      const typename V::Int xm = V::x_dword(x + kXRun * m + 4 * s);
      sums[m][0] = V::dot(sums[m][0], w0, xm);
      sums[m][1] = V::dot(sums[m][1], w1, xm);
    }
  }
}

// The vector operations of the kernel on 256-bit vectors: one panel (8 columns) per vector.
struct StripVectors256 {
  static constexpr int kPanels = 1;
  using Int = __m256i;
  using Float = __m256;
  static Int zero_int() { return _mm256_setzero_si256(); }
  static Float zero_float() { return _mm256_setzero_ps(); }
  static Int load_codes(const std::uint8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
  static Int x_dword(const std::int8_t* p) { return broadcast_x4_256(p); }
  static Float to_float(Int v) { return _mm256_cvtepi32_ps(v); }
  static Float set1(float v) { return _mm256_set1_ps(v); }
  static Float mul(Float a, Float b) { return _mm256_mul_ps(a, b); }
  static Float fmadd(Float a, Float b, Float c) { return _mm256_fmadd_ps(a, b, c); }
  static Float fnmadd(Float a, Float b, Float c) { return _mm256_fnmadd_ps(a, b, c); }
  static void store(float* p, Float v) { _mm256_store_ps(p, v); }
  // The 8 per-column values (scales, zero scales) of group g of panels[0].
  static Float columns(const float* per_panel, const int* panels, int groups, int g) {
    return _mm256_loadu_ps(per_panel + (static_cast<std::size_t>(panels[0]) * groups + g) * kPanel);
  }
};

#if SDAR_X86_VNNI
// AVX-VNNI (and AVX-512 VNNI's 256-bit form): vpdpbusd.
struct StripLanes256 : StripVectors256 {
  static constexpr int kTileRows = 6;  // 12 of the 16 vector registers hold its sums
  static Int dot(Int acc, Int codes, Int x) { return x86_dpbusd(acc, codes, x); }
  template <int MT>
  static void chunk_dots(const std::uint8_t* w, const std::int8_t* x, Int (&sums)[MT][2]) {
    vnni_chunk_dots<StripLanes256, MT>(w, x, sums);
  }
};
#else
// AVX2, 4-bit codes only: vpmaddubsw multiplies 4 codes by 4 activations into two int16 pair sums
// per lane, each at most 2 * 15 * 127 = 3810, so the 8 steps of a chunk (30480) add up in int16
// without saturating; vpmaddwd by ones widens them into the int32 sums once per chunk. 8-bit codes
// would saturate the pair sums: the AVX2 table keeps its small-M kernel for them.
struct StripLanes256 : StripVectors256 {
  static constexpr int kTileRows = 4;  // 8 int16 and 8 int32 sums: the 16 registers, with the codes
  template <int MT>
  static void chunk_dots(const std::uint8_t* w, const std::int8_t* x, Int (&sums)[MT][2]) {
    Int pairs[MT][2];
#pragma GCC unroll 8
    for (int s = 0; s < kChunk / 4; ++s) {
      const Int w0 = load_codes(w + 64 * s);
      const Int w1 = load_codes(w + 64 * s + 32);
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) {
        const Int xm = x_dword(x + kXRun * m + 4 * s);
        // Saturating adds, though they never saturate: as in quantized_transposed256.inl, they keep
        // the compiler from reordering the chain into a tree of live products.
        pairs[m][0] = s == 0 ? _mm256_maddubs_epi16(w0, xm) : _mm256_adds_epi16(pairs[m][0], _mm256_maddubs_epi16(w0, xm));
        pairs[m][1] = s == 0 ? _mm256_maddubs_epi16(w1, xm) : _mm256_adds_epi16(pairs[m][1], _mm256_maddubs_epi16(w1, xm));
      }
    }
    const Int ones = _mm256_set1_epi16(1);
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) {
      sums[m][0] = _mm256_add_epi32(sums[m][0], _mm256_madd_epi16(pairs[m][0], ones));
      sums[m][1] = _mm256_add_epi32(sums[m][1], _mm256_madd_epi16(pairs[m][1], ones));
    }
  }
};
#endif

#if SDAR_X86_VNNI == 1
// On 512-bit vectors: two panels (16 columns) per vector.
struct StripLanes512 {
  static constexpr int kPanels = 2;
  static constexpr int kTileRows = 12;  // 24 of the 32 vector registers hold its sums
  using Int = __m512i;
  using Float = __m512;
  static Int zero_int() { return _mm512_setzero_si512(); }
  static Float zero_float() { return _mm512_setzero_ps(); }
  static Int load_codes(const std::uint8_t* p) { return _mm512_load_si512(p); }
  static Int x_dword(const std::int8_t* p) { return broadcast_x4(p); }  // quantized_vnni.inl
  static Int dot(Int acc, Int codes, Int x) { return _mm512_dpbusd_epi32(acc, codes, x); }
  template <int MT>
  static void chunk_dots(const std::uint8_t* w, const std::int8_t* x, Int (&sums)[MT][2]) {
    vnni_chunk_dots<StripLanes512, MT>(w, x, sums);
  }
  static Float to_float(Int v) { return _mm512_cvtepi32_ps(v); }
  static Float set1(float v) { return _mm512_set1_ps(v); }
  static Float mul(Float a, Float b) { return _mm512_mul_ps(a, b); }
  static Float fmadd(Float a, Float b, Float c) { return _mm512_fmadd_ps(a, b, c); }
  static Float fnmadd(Float a, Float b, Float c) { return _mm512_fnmadd_ps(a, b, c); }
  static void store(float* p, Float v) { _mm512_store_ps(p, v); }
  // The 16 per-column values of group g of panels[0] (columns 0-7) and panels[1] (8-15).
  static Float columns(const float* per_panel, const int* panels, int groups, int g) {
    const __m256 low = _mm256_loadu_ps(per_panel + (static_cast<std::size_t>(panels[0]) * groups + g) * kPanel);
    const __m256 high = _mm256_loadu_ps(per_panel + (static_cast<std::size_t>(panels[1]) * groups + g) * kPanel);
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(low)), _mm256_castps_pd(high), 1));
  }
};
#endif

// The codes of a strip's P panels (panel i's columns at 8i..8i+7) -> out[j * 32 P + 4 c + i] = code
// 4 j + i of column c, for every step j of K (and for Q4 up to the end of the last unit, its high
// nibbles zero past an odd number of chunks).
template <WeightFormat F, int P>
void unpack_strip(const std::uint8_t* const (&panels)[P], int K, std::uint8_t* out) {
  constexpr std::size_t kUnitBytes = kPanel * 32;
  constexpr std::size_t kStepBytes = 32 * P;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const int units = static_cast<int>(panel_units<F>(K));
  for (int u = 0; u < units; ++u) {
    for (int p = 0; p < P; ++p) {
      const std::uint8_t* unit = panels[p] + static_cast<std::size_t>(u) * kUnitBytes;
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        __m256i codes[4];  // dword 4h + d of the panel's 8 columns
        transpose_half_unit(unit, h, codes);
#pragma GCC unroll 4
        for (int d = 0; d < 4; ++d) {
          if constexpr (F == WeightFormat::Q4) {
            // Unit u holds codes 64u + 4 (4h + d).. in the low nibbles and 32 further in the high ones.
            const std::size_t low_step = 16 * static_cast<std::size_t>(u) + 4 * h + d;
            _mm256_store_si256(reinterpret_cast<__m256i*>(out + low_step * kStepBytes + 32 * p),
                               _mm256_and_si256(codes[d], low4));
            _mm256_store_si256(reinterpret_cast<__m256i*>(out + (low_step + 8) * kStepBytes + 32 * p),
                               _mm256_and_si256(_mm256_srli_epi16(codes[d], 4), low4));
          } else {
            const std::size_t step = 8 * static_cast<std::size_t>(u) + 4 * h + d;
            _mm256_store_si256(reinterpret_cast<__m256i*>(out + step * kStepBytes + 32 * p), codes[d]);
          }
        }
      }
    }
  }
}

// Rows [first, first + MT) against the unpacked strip of `panels` (a repeated panel: a missing one,
// its columns computed and never stored).
template <class V, int MT>
void strip_tile(const MatmulArgs& a, const std::uint8_t* strip, const int (&panels)[2 * V::kPanels], int first) {
  using Float = typename V::Float;
  constexpr int kVectorColumns = V::kPanels * kPanel;
  const int K = a.w.cols;
  const int groups = K / a.w.group;
  const int block_chunks = a.a.block / kChunk;
  const int blocks_per_group = a.w.group / a.a.block;
  const std::size_t cap = a.a.row_capacity;
  const float zero_point = a.w.format == WeightFormat::Q4 ? 8.0f : 128.0f;
  Float acc[MT][2];  // from 0.0f, as the reference's
  for (auto& row : acc) row[0] = row[1] = V::zero_float();
  for (int g = 0; g < groups; ++g) {
    Float sw[2];
    Float zs[2];
    for (int v = 0; v < 2; ++v) {
      const int* vector_panels = panels + v * V::kPanels;
      sw[v] = V::columns(a.w.scales, vector_panels, groups, g);
      zs[v] = a.w.symmetric ? V::mul(sw[v], V::set1(zero_point)) : V::columns(a.w.zero_scales, vector_panels, groups, g);
    }
    for (int bg = 0; bg < blocks_per_group; ++bg) {
      const int b = g * blocks_per_group + bg;
      typename V::Int sums[MT][2];
#pragma GCC unroll 12
      for (int m = 0; m < MT; ++m) sums[m][0] = sums[m][1] = V::zero_int();
      for (int c = b * block_chunks; c < (b + 1) * block_chunks; ++c) {
        const std::uint8_t* codes = strip + static_cast<std::size_t>(c) * kChunk * 2 * kVectorColumns;
        V::template chunk_dots<MT>(codes, a.a.q + x_chunk(c, first, cap), sums);
      }
      const float* sx = a.a.scales + static_cast<std::size_t>(b) * cap + first;
      const float* sum_x = a.a.sums + static_cast<std::size_t>(b) * cap + first;
#pragma GCC unroll 12
      for (int m = 0; m < MT; ++m) {
        const Float sxm = V::set1(sx[m]);
        const Float sum_m = V::set1(sum_x[m]);
#pragma GCC unroll 2
        for (int v = 0; v < 2; ++v) {
          const Float r = V::fmadd(V::to_float(sums[m][v]), V::mul(sw[v], sxm), acc[m][v]);
          acc[m][v] = V::fnmadd(zs[v], sum_m, r);
        }
      }
    }
  }
  // Each panel once, its valid columns only.
  for (int m = 0; m < MT && first + m < a.rows; ++m) {
    alignas(64) float out[2 * kVectorColumns];
    V::store(out, acc[m][0]);
    V::store(out + kVectorColumns, acc[m][1]);
    float* y = a.y + static_cast<std::size_t>(first + m) * a.ldy;
    for (int i = 0; i < 2 * V::kPanels; ++i) {
      if (i > 0 && panels[i] == panels[i - 1]) break;
      const int n0 = panels[i] * kPanel;
      const int valid = a.w.rows - n0 < kPanel ? a.w.rows - n0 : kPanel;
      for (int j = 0; j < valid; ++j) y[n0 + j] = out[i * kPanel + j];
    }
  }
}

template <class V, WeightFormat F>
void quantized_strips_format(const MatmulArgs& a, int panel_begin, int panel_end, std::uint8_t* scratch) {
  constexpr int kStripPanels = 2 * V::kPanels;
  constexpr std::size_t kUnitBytes = kPanel * 32;
  const int K = a.w.cols;
  const std::size_t panel_bytes = panel_units<F>(K) * kUnitBytes;
  const auto* w = static_cast<const std::uint8_t*>(a.w.data);
  for (int p0 = panel_begin; p0 < panel_end; p0 += kStripPanels) {
    int panels[kStripPanels];
    const std::uint8_t* codes[kStripPanels];
    for (int i = 0; i < kStripPanels; ++i) {
      panels[i] = p0 + i < panel_end ? p0 + i : panel_end - 1;
      codes[i] = w + panels[i] * panel_bytes;
    }
    unpack_strip<F, kStripPanels>(codes, K, scratch);
    int first = 0;
    for (; first + V::kTileRows <= a.rows; first += V::kTileRows) strip_tile<V, V::kTileRows>(a, scratch, panels, first);
    if (V::kTileRows > 6 && first + 6 <= a.rows) {
      strip_tile<V, 6>(a, scratch, panels, first);
      first += 6;
    }
    switch (a.rows - first) {  // the last rows: a narrower tile (rows past M are never read)
      case 1: strip_tile<V, 1>(a, scratch, panels, first); break;
      case 2: strip_tile<V, 2>(a, scratch, panels, first); break;
      case 3: strip_tile<V, 3>(a, scratch, panels, first); break;
      case 4: strip_tile<V, 4>(a, scratch, panels, first); break;
      case 5: strip_tile<V, 5>(a, scratch, panels, first); break;
      default: break;
    }
  }
}

#if SDAR_X86_VNNI == 1
using StripLanes = StripLanes512;
#else
using StripLanes = StripLanes256;
#endif

void quantized_strips_kernel(const MatmulArgs& a, int panel_begin, int panel_end, std::uint8_t* scratch) {
  if (a.w.format == WeightFormat::Q4) {
    quantized_strips_format<StripLanes, WeightFormat::Q4>(a, panel_begin, panel_end, scratch);
  } else {
    // The AVX2 table's int8 matmuls never come here (its strips_take_q8 is false: Matmul keeps them
    // on the small-M kernel), so its build has no 8-bit form of this kernel.
#if SDAR_X86_VNNI
    quantized_strips_format<StripLanes, WeightFormat::Q8>(a, panel_begin, panel_end, scratch);
#endif
  }
}
