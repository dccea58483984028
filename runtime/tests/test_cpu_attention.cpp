// The CPU engine's attention, per kernel table this machine can run (ctest -R sdar_cpu_attention):
//   - the tiled vector kernels (VectorKernels::dots, ::weighted_sum) give, for every query row of a
//     tile, the bits that row gives alone (m = 1): a tile shares loads, never a chain;
//   - weights that are exact zeros past a row's own keys change no bit of its weighted sum (what
//     attend() relies on to score a tile against its last token's keys);
//   - attend() over token tiles and token ranges gives the bits of one query at a time (the
//     algorithm written out below with m = 1 calls), reading the cache in place or a copy of a
//     head's rows;
//   - the x86-64 tables give the same bits as each other;
//   - all against a double-precision reference. Tolerances: a score is a chain of d float32
//     fused multiply-adds (plus a reduction), each rounding by at most 2^-24 of a partial sum, so
//     |s - s_ref| <= (d + 4) * 2^-24 * sum|q_i k_i|; an output of a weighted sum likewise
//     (n + 1) * 2^-24 * sum|w_j v_j|. A whole attention adds the softmax's exp (about 1 ulp) and
//     the score errors above scaled by the weights: 1e-5 * max|v| covers the shapes here (scores of
//     a few units, so errors of a few 1e-7 relative in the weights).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "kernels.h"
#include "transformer_ops.h"

namespace {

using sdar::cpu::AttentionShape;
using sdar::cpu::VectorKernels;

int failures = 0;

#define CHECK(cond, what)                                                          \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::fprintf(stderr, "%s:%d: %s (%s)\n", __FILE__, __LINE__, what, #cond);  \
      ++failures;                                                                  \
    }                                                                              \
  } while (0)

std::vector<float> random_values(std::size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// sum of a[i * a_step] * b[i * b_step] over i < count in double precision, and whether `got` is within
// `count + slack` roundings of 2^-24 of the products' magnitudes.
bool near_exact_sum(float got, const float* a, std::size_t a_step, const float* b, std::size_t b_step, int count,
                    int slack) {
  double sum = 0.0;
  double magnitude = 0.0;
  for (int i = 0; i < count; ++i) {
    const double p = static_cast<double>(a[i * a_step]) * b[i * b_step];
    sum += p;
    magnitude += std::fabs(p);
  }
  return std::fabs(got - sum) <= (count + slack) * 0x1p-24 * magnitude;
}

// Scores and weighted sums of m query rows against n cache rows (stride apart, d values each).
void test_vector_kernels(const VectorKernels& v, std::mt19937& rng) {
  for (int d : {8, 16, 24, 64, 80, 128}) {
    for (int m : {1, 2, 3, 5, 6, 7, 12, 13}) {
      for (int n : {1, 3, 4, 7, 33}) {
        const std::size_t stride = static_cast<std::size_t>(d) * 3 + 5;  // cache rows interleave heads
        const std::vector<float> q = random_values(static_cast<std::size_t>(m) * d, rng);
        const std::vector<float> rows = random_values(static_cast<std::size_t>(n) * stride, rng);
        const std::size_t out_stride = static_cast<std::size_t>(n) + 2;
        std::vector<float> scores(m * out_stride, NAN);
        v.dots(q.data(), m, rows.data(), stride, n, d, scores.data(), out_stride);
        std::vector<float> alone(n);
        bool tiled_equal = true;
        bool near_reference = true;
        for (int r = 0; r < m; ++r) {
          v.dots(q.data() + static_cast<std::size_t>(r) * d, 1, rows.data(), stride, n, d, alone.data(), n);
          for (int j = 0; j < n; ++j) {
            const float score = scores[r * out_stride + j];
            tiled_equal = tiled_equal && same_bits(score, alone[j]);
            near_reference = near_reference && near_exact_sum(score, q.data() + r * d, 1, rows.data() + j * stride, 1, d, 4);
          }
        }
        CHECK(tiled_equal, "a tile of queries changed a score's bits");
        CHECK(near_reference, "scores off the double-precision reference");

        // Weights: row r keeps its first `own` of n weights, the rest are exact zeros.
        std::vector<float> w = random_values(m * out_stride, rng);
        std::vector<int> own(m);
        for (int r = 0; r < m; ++r) {
          own[r] = n - (r % 3 == 2 ? n / 2 : 0);
          for (int j = own[r]; j < n; ++j) w[r * out_stride + j] = 0.0f;
        }
        std::vector<float> out(static_cast<std::size_t>(m) * d, NAN);
        v.weighted_sum(w.data(), out_stride, m, rows.data(), stride, n, d, out.data());
        std::vector<float> single(d);
        tiled_equal = true;
        near_reference = true;
        for (int r = 0; r < m; ++r) {
          v.weighted_sum(w.data() + r * out_stride, out_stride, 1, rows.data(), stride, own[r], d, single.data());
          for (int i = 0; i < d; ++i) {
            const float value = out[r * d + i];
            tiled_equal = tiled_equal && same_bits(value, single[i]);
            near_reference =
                near_reference && near_exact_sum(value, w.data() + r * out_stride, 1, rows.data() + i, stride, n, 1);
          }
        }
        CHECK(tiled_equal, "a tile, or zero weights past a row's keys, changed a weighted sum's bits");
        CHECK(near_reference, "weighted sums off the double-precision reference");
      }
    }
  }
}

struct Case {
  AttentionShape shape;
  std::vector<float> q;       // [B * T][heads * D]
  std::vector<float> keys;    // [past + T][B][kv_heads][D]
  std::vector<float> values;
};

Case make_case(int batch, int tokens, int block, int heads, int kv_heads, int d, int past, std::mt19937& rng) {
  Case c;
  c.shape.batch = batch;
  c.shape.tokens = tokens;
  c.shape.block_length = block;
  c.shape.heads = heads;
  c.shape.kv_heads = kv_heads;
  c.shape.head_dim = d;
  c.shape.past_len = past;
  c.q = random_values(static_cast<std::size_t>(batch) * tokens * heads * d, rng, 0.5f);
  const std::size_t cache = static_cast<std::size_t>(past + tokens) * batch * kv_heads * d;
  c.keys = random_values(cache, rng, 0.5f);
  c.values = random_values(cache, rng);
  return c;
}

// f(row, head_at, cache_row, n) for every query of the case: where its q (and output) row starts,
// where its kv head's first cache row starts, the cache's row stride, how many cache rows it sees.
template <class F>
void for_each_query(const Case& c, F&& f) {
  const AttentionShape& s = c.shape;
  const int D = s.head_dim;
  const int G = s.heads / s.kv_heads;
  const std::size_t cache_row = static_cast<std::size_t>(s.batch) * s.kv_heads * D;
  for (int b = 0; b < s.batch; ++b) {
    for (int h = 0; h < s.heads; ++h) {
      const std::size_t head_at = (static_cast<std::size_t>(b) * s.kv_heads + h / G) * D;
      for (int t = 0; t < s.tokens; ++t) {
        const int n = static_cast<int>(s.past_len) + std::min(s.tokens, (t / s.block_length + 1) * s.block_length);
        const std::size_t row = (static_cast<std::size_t>(b) * s.tokens + t) * s.heads * D + static_cast<std::size_t>(h) * D;
        f(row, head_at, cache_row, n);
      }
    }
  }
}

// One query at a time, with the same kernels (m = 1): the attention before it was tiled.
std::vector<float> attend_one_by_one(const VectorKernels& v, const Case& c) {
  const int D = c.shape.head_dim;
  std::vector<float> out(c.q.size(), NAN);
  std::vector<float> scores(c.shape.past_len + c.shape.tokens);
  for_each_query(c, [&](std::size_t row, std::size_t head_at, std::size_t cache_row, int n) {
    v.dots(c.q.data() + row, 1, c.keys.data() + head_at, cache_row, n, D, scores.data(), n);
    v.softmax(scores.data(), n);
    v.weighted_sum(scores.data(), n, 1, c.values.data() + head_at, cache_row, n, D, out.data() + row);
  });
  return out;
}

// attend() as the engine calls it, each (batch row, kv head) split into `ranges` token ranges; with
// `copy_rows`, the tiles read a copy of the head's cached rows (one buffer for every call, as a
// thread of the engine reuses its own, NaN-filled first so that a row read before it is copied shows).
std::vector<float> attend_tiled(const VectorKernels& v, const Case& c, int ranges, bool copy_rows) {
  const AttentionShape& s = c.shape;
  std::vector<float> out(c.q.size(), NAN);
  std::vector<float> scratch(sdar::cpu::attention_scratch_floats(s, s.past_len + s.tokens), NAN);
  std::vector<float> rows(sdar::cpu::attention_rows_floats(s, s.past_len + s.tokens), NAN);
  for (int b = 0; b < s.batch; ++b) {
    for (int kv = 0; kv < s.kv_heads; ++kv) {
      for (int r = 0; r < ranges; ++r) {
        std::fill(rows.begin(), rows.end(), NAN);
        sdar::cpu::attend(v, s, b, kv, s.tokens * r / ranges, s.tokens * (r + 1) / ranges, c.q.data(), c.keys.data(),
                          c.values.data(), out.data(), scratch.data(), copy_rows ? rows.data() : nullptr);
      }
    }
  }
  return out;
}

// Double precision, straight from the definition.
std::vector<double> attend_reference(const Case& c) {
  const int D = c.shape.head_dim;
  std::vector<double> out(c.q.size());
  for_each_query(c, [&](std::size_t row, std::size_t head_at, std::size_t cache_row, int n) {
    std::vector<double> p(n);
    double top = -INFINITY;
    for (int j = 0; j < n; ++j) {
      double dot = 0.0;
      for (int i = 0; i < D; ++i) dot += static_cast<double>(c.q[row + i]) * c.keys[head_at + j * cache_row + i];
      p[j] = dot;
      top = std::max(top, dot);
    }
    double sum = 0.0;
    for (double& x : p) sum += (x = std::exp(x - top));
    for (int i = 0; i < D; ++i) {
      double acc = 0.0;
      for (int j = 0; j < n; ++j) acc += p[j] / sum * c.values[head_at + j * cache_row + i];
      out[row + i] = acc;
    }
  });
  return out;
}

void test_attend(const VectorKernels& v, std::mt19937& rng, std::vector<std::vector<float>>& results) {
  struct Shape {
    int batch, tokens, block, heads, kv_heads, d, past;
  };
  // Prefill-like (many tokens, no past), decode-like (one block after a past), grouped-query
  // ratios 1, 2, 4 and 16 (a tile of one token), blocks that do and do not divide the tiles.
  const Shape shapes[] = {{1, 37, 4, 4, 2, 16, 0},  {2, 8, 4, 4, 2, 24, 11}, {1, 4, 4, 4, 4, 128, 50},
                          {1, 29, 1, 8, 2, 32, 3}, {1, 17, 8, 16, 1, 16, 0}, {1, 50, 16, 2, 1, 64, 7}};
  for (const Shape& sh : shapes) {
    const Case c = make_case(sh.batch, sh.tokens, sh.block, sh.heads, sh.kv_heads, sh.d, sh.past, rng);
    const std::vector<float> one = attend_one_by_one(v, c);
    const std::vector<double> ref = attend_reference(c);
    double v_max = 0.0;
    for (float x : c.values) v_max = std::max(v_max, static_cast<double>(std::fabs(x)));
    bool near_reference = true;
    for (std::size_t i = 0; i < one.size(); ++i) near_reference = near_reference && std::fabs(one[i] - ref[i]) <= 1e-5 * v_max;
    CHECK(near_reference, "attention off the double-precision reference");
    for (int ranges : {1, 3}) {
      for (bool copy_rows : {false, true}) {
        const std::vector<float> tiled = attend_tiled(v, c, ranges, copy_rows);
        bool equal = true;
        for (std::size_t i = 0; i < one.size(); ++i) equal = equal && same_bits(tiled[i], one[i]);
        CHECK(equal, copy_rows ? "tiled attention over copied cache rows changed bits against one query at a time"
                               : "tiled attention changed bits against one query at a time");
      }
    }
    results.push_back(one);
  }
}

}  // namespace

int main() {
  const std::vector<std::string> available = sdar::cpu::available_kernels();
  std::vector<std::vector<float>> x86_first;  // the first x86 table's attention outputs
  for (const std::string& name : available) {
    std::printf("attention kernels: %s\n", name.c_str());
    const VectorKernels& v = sdar::cpu::select_kernels(name).vec;
    std::mt19937 rng(77);  // the same inputs for every table
    test_vector_kernels(v, rng);
    std::vector<std::vector<float>> results;
    test_attend(v, rng, results);
    if (name == "avx512vnni" || name == "avxvnni" || name == "avx2") {
      if (x86_first.empty()) {
        x86_first = results;
      } else {
        bool equal = true;
        for (std::size_t c = 0; c < results.size(); ++c) {
          for (std::size_t i = 0; i < results[c].size(); ++i) equal = equal && same_bits(results[c][i], x86_first[c][i]);
        }
        CHECK(equal, "x86 tables disagree on attention bits");
      }
    }
  }
  if (failures == 0) std::printf("all CPU attention checks passed\n");
  return failures == 0 ? 0 : 1;
}
