#include "exp_terms.h"

#include <cmath>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define SDAR_EXP_TERMS_AVX2 1
#endif

namespace sdar {
namespace {

void exp_terms_libm(const float* logits, int n, double top, double* w) {
  for (int i = 0; i < n; ++i) w[i] = std::exp(static_cast<double>(logits[i]) - top);
}

#if SDAR_EXP_TERMS_AVX2
// exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 (ln 2 in two parts, so r is exact to
// well below an ulp), |r| <= ln 2 / 2: the Taylor series to degree 13 leaves a relative error under
// 1e-18 there. 2^k is built in the exponent field from k's bits in the rounding constant.
__attribute__((target("avx2,fma"))) inline __m256d exp4(__m256d x) {
  const __m256d floor = _mm256_set1_pd(-708.0);
  const __m256d underflow = _mm256_cmp_pd(x, floor, _CMP_LT_OQ);
  x = _mm256_max_pd(x, floor);
  const __m256d shifter = _mm256_set1_pd(6755399441055744.0);  // 1.5 * 2^52: adding it rounds to an integer
  const __m256d t = _mm256_fmadd_pd(x, _mm256_set1_pd(1.4426950408889634), shifter);
  const __m256d k = _mm256_sub_pd(t, shifter);
  __m256d r = _mm256_fnmadd_pd(k, _mm256_set1_pd(6.93147180369123816490e-01), x);
  r = _mm256_fnmadd_pd(k, _mm256_set1_pd(1.90821492927058770002e-10), r);
  static constexpr double kInverseFactorials[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0,
                                                  1.0 / 3628800.0,    1.0 / 362880.0,    1.0 / 40320.0,
                                                  1.0 / 5040.0,       1.0 / 720.0,       1.0 / 120.0,
                                                  1.0 / 24.0,         1.0 / 6.0,         0.5,
                                                  1.0,                1.0};
  __m256d p = _mm256_set1_pd(kInverseFactorials[0]);
  for (int i = 1; i < 14; ++i) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(kInverseFactorials[i]));
  const __m256i exponent = _mm256_slli_epi64(
      _mm256_add_epi64(_mm256_sub_epi64(_mm256_castpd_si256(t), _mm256_castpd_si256(shifter)), _mm256_set1_epi64x(1023)),
      52);
  return _mm256_andnot_pd(underflow, _mm256_mul_pd(p, _mm256_castsi256_pd(exponent)));
}

__attribute__((target("avx2,fma"))) void exp_terms_avx2(const float* logits, int n, double top, double* w) {
  const __m256d shift = _mm256_set1_pd(top);
  int i = 0;
  // Four vectors per iteration: the polynomial is a chain of 14 dependent multiply-adds.
  for (; i + 16 <= n; i += 16) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const __m256d x = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(logits + i + 4 * v)), shift);
      _mm256_storeu_pd(w + i + 4 * v, exp4(x));
    }
  }
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(w + i, exp4(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(logits + i)), shift)));
  if (i < n) {
    alignas(32) double tail[4];
    for (int j = 0; j < 4; ++j) tail[j] = i + j < n ? static_cast<double>(logits[i + j]) - top : 0.0;
    _mm256_store_pd(tail, exp4(_mm256_load_pd(tail)));
    for (int j = 0; i + j < n; ++j) w[i + j] = tail[j];
  }
}

bool have_avx2_fma() {
  static const bool have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return have;
}
#endif

}  // namespace

void exp_terms(const float* logits, int n, double top, double* w) {
#if SDAR_EXP_TERMS_AVX2
  if (have_avx2_fma()) {
    exp_terms_avx2(logits, n, top, w);
    return;
  }
#endif
  exp_terms_libm(logits, n, top, w);
}

}  // namespace sdar
