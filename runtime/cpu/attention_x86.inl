// The attention's two vector kernels on x86-64 (VectorKernels::dots and ::weighted_sum), included by
// kernels_x86.inl after vec_dot and hsum. Each works on a register tile: query rows x key rows for
// the scores, query rows x output columns for the weighted sum, so that each cache row loaded from
// memory serves several queries (one query at a time, every key and value row was read once per
// query, and the loads, not the multiply-adds, set the pace).
//
// The bits do not depend on the tile:
//   - a score is vec_dot's chain: two 8-lane accumulators over d in steps of 16, then
//     hsum(s0 + s1). The 512-bit form holds s0 in lanes 0-7 and s1 in lanes 8-15 of one register,
//     the same fused multiply-adds lane for lane, so every x86 table gives the same scores;
//   - an output value is fma(w[j], row j, acc) from zero in row order, lane by lane, at any vector
//     width: the scalar table's chain.

// out[r * out_stride + c] for the MR x NR tile of q rows (at q + r * d) and key rows (at k + c * stride).
#if SDAR_X86_VNNI == 1
// 6 x 4 accumulators of 512 bits take 24 of the 32 registers; 4 key rows and a query row the rest.
constexpr int kDotRows = 6;
constexpr int kDotKeys = 4;

// The zero-masked forms of these shuffles and extracts (all lanes kept): GCC 12 warns that the plain forms'
// undefined pass-through source is used uninitialized once they are inlined.
template <int kSelect>
inline __m512 lanes128(__m512 a, __m512 b) {
  return _mm512_maskz_shuffle_f32x4(0xFFFF, a, b, kSelect);
}

template <int kHalf>
inline __m256 half256(__m512 z) {
  return _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(z), kHalf));
}

// The score of one accumulator (s0 in lanes 0-7, s1 in 8-15): hsum(s0 + s1).
inline float score_of(__m512 z) { return hsum(_mm256_add_ps(half256<0>(z), half256<1>(z))); }

// score_of() of 8 accumulators at once, each score through the same additions (with e = s0 + s1:
// ((e0 + e4) + (e2 + e6)) + ((e1 + e5) + (e3 + e7))); the shuffles bring the operands of each
// addition step of 8 accumulators into one register: 8 vector additions and 16 shuffles for the 8
// scores, against 32 and 32 one by one.
inline __m256 scores_of8(const __m512* z) {
  __m512 e[4];  // [e of z 2k | e of z 2k+1]
  for (int k = 0; k < 4; ++k) {
    e[k] = _mm512_add_ps(lanes128<_MM_SHUFFLE(1, 0, 1, 0)>(z[2 * k], z[2 * k + 1]),
                         lanes128<_MM_SHUFFLE(3, 2, 3, 2)>(z[2 * k], z[2 * k + 1]));
  }
  __m512 a[2];  // 128-bit lane j: e[0:4] + e[4:8] of z 4k + j
  for (int k = 0; k < 2; ++k) {
    a[k] = _mm512_add_ps(lanes128<_MM_SHUFFLE(2, 0, 2, 0)>(e[2 * k], e[2 * k + 1]),
                         lanes128<_MM_SHUFFLE(3, 1, 3, 1)>(e[2 * k], e[2 * k + 1]));
  }
  // lane j: [a0 + a2, a1 + a3] of z j, then of z j + 4
  const __m512 b = _mm512_add_ps(_mm512_shuffle_ps(a[0], a[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(a[0], a[1], _MM_SHUFFLE(3, 2, 3, 2)));
  // lane j: [b0 + b1 of z j, of z j + 4, the same again]
  const __m512 c = _mm512_add_ps(_mm512_shuffle_ps(b, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(b, b, _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
  return half256<0>(_mm512_maskz_permutexvar_ps(0xFFFF, order, c));
}
using ScoreAcc = __m512;
#else
// 3 x 2 pairs of 256-bit accumulators take 12 of the 16 registers; 2 key halves and a query half the rest.
constexpr int kDotRows = 3;
constexpr int kDotKeys = 2;

inline float score_of(__m256 e) { return hsum(e); }  // e = s0 + s1

// hsum() of 8 vectors at once, each through the same additions:
// ((e0 + e4) + (e2 + e6)) + ((e1 + e5) + (e3 + e7)): 7 vector additions and 15 shuffles for the 8,
// against 24 and 24 one by one.
inline __m256 scores_of8(const __m256* v) {
  __m256 a[4];  // [e[0:4] + e[4:8] of v 2k | of v 2k+1]
  for (int k = 0; k < 4; ++k) {
    a[k] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * k], v[2 * k + 1], 0x20),
                         _mm256_permute2f128_ps(v[2 * k], v[2 * k + 1], 0x31));
  }
  __m256 b[2];  // [a0 + a2, a1 + a3 of v 4k, of v 4k + 2 | of v 4k + 1, of v 4k + 3]
  for (int k = 0; k < 2; ++k) {
    b[k] = _mm256_add_ps(_mm256_shuffle_ps(a[2 * k], a[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(a[2 * k], a[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // [b0 + b1 of v 0, 2, 4, 6 | of v 1, 3, 5, 7]
  const __m256 c = _mm256_add_ps(_mm256_shuffle_ps(b[0], b[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(b[0], b[1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm256_permutevar8x32_ps(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
using ScoreAcc = __m256;
#endif

// out[r * out_stride + c] = the score of accumulator r * NR + c.
template <int MR, int NR>
inline void store_scores(const ScoreAcc* acc, float* out, std::size_t out_stride) {
  constexpr int N = MR * NR;
  constexpr int kWhole = N - N % 8;
  float scores[kWhole + 8];
  for (int k = 0; k < kWhole; k += 8) _mm256_storeu_ps(scores + k, scores_of8(acc + k));
  if constexpr (N % 8 >= 3) {  // the rest padded with zeros: still fewer instructions than one by one
    ScoreAcc rest[8];
    for (int i = 0; i < N % 8; ++i) rest[i] = acc[kWhole + i];
    for (int i = N % 8; i < 8; ++i) rest[i] = ScoreAcc{};
    _mm256_storeu_ps(scores + kWhole, scores_of8(rest));
  } else {
    for (int k = kWhole; k < N; ++k) scores[k] = score_of(acc[k]);
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) out[r * out_stride + c] = scores[r * NR + c];
  }
}

#if SDAR_X86_VNNI == 1
template <int MR, int NR>
inline void dots_tile(const float* q, int d, const float* k, std::size_t stride, float* out, std::size_t out_stride) {
  __m512 acc[MR][NR];
  for (auto& row : acc) {
    for (auto& a : row) a = _mm512_setzero_ps();
  }
  for (int i = 0; i < d; i += 16) {
    __m512 kv[NR];
    for (int c = 0; c < NR; ++c) kv[c] = _mm512_loadu_ps(k + c * stride + i);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m512 qv = _mm512_loadu_ps(q + static_cast<std::size_t>(r) * d + i);
      for (int c = 0; c < NR; ++c) acc[r][c] = _mm512_fmadd_ps(qv, kv[c], acc[r][c]);
    }
  }
  store_scores<MR, NR>(&acc[0][0], out, out_stride);
}
#else
template <int MR, int NR>
inline void dots_tile(const float* q, int d, const float* k, std::size_t stride, float* out, std::size_t out_stride) {
  __m256 s0[MR][NR];
  __m256 s1[MR][NR];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) s0[r][c] = s1[r][c] = _mm256_setzero_ps();
  }
  for (int i = 0; i < d; i += 16) {
    __m256 kv[NR];
    for (int c = 0; c < NR; ++c) kv[c] = _mm256_loadu_ps(k + c * stride + i);
    for (int r = 0; r < MR; ++r) {
      const __m256 qv = _mm256_loadu_ps(q + static_cast<std::size_t>(r) * d + i);
      for (int c = 0; c < NR; ++c) s0[r][c] = _mm256_fmadd_ps(qv, kv[c], s0[r][c]);
    }
    for (int c = 0; c < NR; ++c) kv[c] = _mm256_loadu_ps(k + c * stride + i + 8);
    for (int r = 0; r < MR; ++r) {
      const __m256 qv = _mm256_loadu_ps(q + static_cast<std::size_t>(r) * d + i + 8);
      for (int c = 0; c < NR; ++c) s1[r][c] = _mm256_fmadd_ps(qv, kv[c], s1[r][c]);
    }
  }
  __m256 sums[MR][NR];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) sums[r][c] = _mm256_add_ps(s0[r][c], s1[r][c]);
  }
  store_scores<MR, NR>(&sums[0][0], out, out_stride);
}
#endif

// Both kernels take the cache rows in blocks that stay in L1 (32 rows of 128 values: 16 KB) while
// every register tile of query rows runs against them, so that a row comes from memory (or L2) once
// per call rather than once per register tile. The weighted sums carry their accumulators from one
// block to the next through `out` (a float stored and loaded back is the same float), so each output
// is still one chain over the rows in order.
constexpr int kCacheBlock = 32;

// MR query rows against n key rows (d a multiple of 16).
template <int MR>
void dots_rows(const float* q, int d, const float* rows, std::size_t stride, int n, float* out, std::size_t out_stride) {
  int j = 0;
  for (; j + kDotKeys <= n; j += kDotKeys) {
    dots_tile<MR, kDotKeys>(q, d, rows + static_cast<std::size_t>(j) * stride, stride, out + j, out_stride);
  }
  for (; j < n; ++j) dots_tile<MR, 1>(q, d, rows + static_cast<std::size_t>(j) * stride, stride, out + j, out_stride);
}

// The last `left` (< kDotRows) query rows.
template <int MR>
void dots_rest(int left, const float* q, int d, const float* rows, std::size_t stride, int n, float* out,
               std::size_t out_stride) {
  if constexpr (MR > 0) {
    if (left == MR) {
      dots_rows<MR>(q, d, rows, stride, n, out, out_stride);
    } else {
      dots_rest<MR - 1>(left, q, d, rows, stride, n, out, out_stride);
    }
  }
}

void vec_dots(const float* q, int m, const float* rows, std::size_t stride, int n, int d, float* out,
              std::size_t out_stride) {
  if (d % 16 != 0) {  // vec_dot's tails; no model has such heads, the tests do
    for (int r = 0; r < m; ++r) {
      for (int j = 0; j < n; ++j) {
        out[r * out_stride + j] = vec_dot(q + static_cast<std::size_t>(r) * d, rows + static_cast<std::size_t>(j) * stride, d);
      }
    }
    return;
  }
  for (int j0 = 0; j0 < n; j0 += kCacheBlock) {
    const int nb = n - j0 < kCacheBlock ? n - j0 : kCacheBlock;
    const float* block = rows + static_cast<std::size_t>(j0) * stride;
    int r = 0;
    for (; r + kDotRows <= m; r += kDotRows) {
      dots_rows<kDotRows>(q + static_cast<std::size_t>(r) * d, d, block, stride, nb, out + r * out_stride + j0,
                          out_stride);
    }
    dots_rest<kDotRows - 1>(m - r, q + static_cast<std::size_t>(r) * d, d, block, stride, nb,
                            out + r * out_stride + j0, out_stride);
  }
}

// Weighted sums: MR query rows x NC vectors of output columns starting at column i, over a block of rows.
#if SDAR_X86_VNNI == 1
// 6 rows x 4 vectors (64 columns): 24 accumulators, the 6 rows' weights and one value vector.
constexpr int kSumRows = 6;
constexpr int kSumVectors = 4;
constexpr int kLanes = 16;
using Lanes = __m512;
inline Lanes lanes_zero() { return _mm512_setzero_ps(); }
inline Lanes lanes_load(const float* p) { return _mm512_loadu_ps(p); }
inline void lanes_store(float* p, Lanes v) { _mm512_storeu_ps(p, v); }
inline Lanes lanes_fma(Lanes a, Lanes b, Lanes c) { return _mm512_fmadd_ps(a, b, c); }
inline Lanes lanes_broadcast(float v) { return _mm512_set1_ps(v); }
#else
// 3 rows x 4 vectors (32 columns): 12 accumulators, the 3 rows' weights and one value vector, all
// 16 registers.
constexpr int kSumRows = 3;
constexpr int kSumVectors = 4;
constexpr int kLanes = 8;
using Lanes = __m256;
inline Lanes lanes_zero() { return _mm256_setzero_ps(); }
inline Lanes lanes_load(const float* p) { return _mm256_loadu_ps(p); }
inline void lanes_store(float* p, Lanes v) { _mm256_storeu_ps(p, v); }
inline Lanes lanes_fma(Lanes a, Lanes b, Lanes c) { return _mm256_fmadd_ps(a, b, c); }
inline Lanes lanes_broadcast(float v) { return _mm256_set1_ps(v); }
#endif

// Rows [j0, j1) into the MR x NC tile of outputs at column i: from zero where j0 == 0, else from what
// `out` holds.
template <int MR, int NC>
inline void sum_tile(const float* w, std::size_t w_stride, const float* rows, std::size_t stride, int j0, int j1, int d,
                     int i, float* out) {
  Lanes acc[MR][NC];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NC; ++c) {
      acc[r][c] = j0 == 0 ? lanes_zero() : lanes_load(out + static_cast<std::size_t>(r) * d + i + c * kLanes);
    }
  }
  for (int j = j0; j < j1; ++j) {
    const float* row = rows + static_cast<std::size_t>(j) * stride + i;
    Lanes wj[MR];
    for (int r = 0; r < MR; ++r) wj[r] = lanes_broadcast(w[r * w_stride + j]);
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      const Lanes v = lanes_load(row + c * kLanes);
      for (int r = 0; r < MR; ++r) acc[r][c] = lanes_fma(wj[r], v, acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NC; ++c) lanes_store(out + static_cast<std::size_t>(r) * d + i + c * kLanes, acc[r][c]);
  }
}

// MR query rows, every output column, rows [j0, j1).
template <int MR>
void sum_rows(const float* w, std::size_t w_stride, const float* rows, std::size_t stride, int j0, int j1, int d,
              float* out) {
  int i = 0;
  for (; i + kSumVectors * kLanes <= d; i += kSumVectors * kLanes) {
    sum_tile<MR, kSumVectors>(w, w_stride, rows, stride, j0, j1, d, i, out);
  }
  for (; i + kLanes <= d; i += kLanes) sum_tile<MR, 1>(w, w_stride, rows, stride, j0, j1, d, i, out);
  for (; i < d; ++i) {  // columns past the last full vector: the same chain, one lane
    for (int r = 0; r < MR; ++r) {
      float* o = out + static_cast<std::size_t>(r) * d + i;
      float acc = j0 == 0 ? 0.0f : *o;
      for (int j = j0; j < j1; ++j) acc = __builtin_fmaf(w[r * w_stride + j], rows[static_cast<std::size_t>(j) * stride + i], acc);
      *o = acc;
    }
  }
}

template <int MR>
void sum_rest(int left, const float* w, std::size_t w_stride, const float* rows, std::size_t stride, int j0, int j1,
              int d, float* out) {
  if constexpr (MR > 0) {
    if (left == MR) {
      sum_rows<MR>(w, w_stride, rows, stride, j0, j1, d, out);
    } else {
      sum_rest<MR - 1>(left, w, w_stride, rows, stride, j0, j1, d, out);
    }
  }
}

void vec_weighted_sum(const float* w, std::size_t w_stride, int m, const float* rows, std::size_t stride, int n, int d,
                      float* out) {
  if (n == 0) {  // no rows: zeros, as the chain from zero gives
    for (std::size_t i = 0; i < static_cast<std::size_t>(m) * d; ++i) out[i] = 0.0f;
    return;
  }
  for (int j0 = 0; j0 < n; j0 += kCacheBlock) {
    const int j1 = n - j0 < kCacheBlock ? n : j0 + kCacheBlock;
    int r = 0;
    for (; r + kSumRows <= m; r += kSumRows) {
      sum_rows<kSumRows>(w + r * w_stride, w_stride, rows, stride, j0, j1, d, out + static_cast<std::size_t>(r) * d);
    }
    sum_rest<kSumRows - 1>(m - r, w + r * w_stride, w_stride, rows, stride, j0, j1, d,
                           out + static_cast<std::size_t>(r) * d);
  }
}
