#include "transformer_ops.h"

#include <cmath>
#include <cstring>

namespace sdar::cpu {

void rms_norm(const VectorKernels& v, const float* x, const float* w, float* out, int n, float eps) {
  const float mean = v.sum_squares(x, n) / static_cast<float>(n);
  const float r = 1.0f / std::sqrt(mean + eps);
  for (int i = 0; i < n; ++i) out[i] = x[i] * r * w[i];
}

void matrix_row(const PackedMatrix& m, int row, float* out) {
  const int K = m.cols;
  const std::size_t panel = static_cast<std::size_t>(row / kPanel);
  const int r = row % kPanel;
  if (m.format == WeightFormat::F32) {
    const float* base = static_cast<const float*>(m.data) + panel * K * kPanel + r;
    for (int k = 0; k < K; ++k) out[k] = base[static_cast<std::size_t>(k) * kPanel];
    return;
  }
  // Units of 32 bytes per row (packed_matrix.h): 64 weights as nibbles (Q4) or 32 bytes (Q8).
  const bool q4 = m.format == WeightFormat::Q4;
  const int unit_weights = q4 ? 2 * kChunk : kChunk;
  const std::size_t units = static_cast<std::size_t>((K + unit_weights - 1) / unit_weights);
  const int groups = K / m.group;
  const auto* base = static_cast<const std::uint8_t*>(m.data) + (panel * units * kPanel + r) * 32;
  const float zp = symmetric_zero_point(m.format);
  for (int k = 0; k < K; ++k) {
    const std::uint8_t* unit = base + static_cast<std::size_t>(k / unit_weights) * kPanel * 32;
    const int j = k % unit_weights;
    const int code = q4 ? (j < kChunk ? unit[j] & 0x0F : unit[j - kChunk] >> 4) : unit[j];
    const std::size_t si = (panel * groups + k / m.group) * kPanel + r;
    const float s = m.scales[si];
    const float zs = m.symmetric ? s * zp : m.zero_scales[si];
    out[k] = std::fma(static_cast<float>(code), s, -zs);
  }
}

void norm_rope(const VectorKernels& v, float* head, const float* w, const float* cos, const float* sin, int D, float eps,
               float scale) {
  rms_norm(v, head, w, head, D, eps);
  const int h = D / 2;
  for (int i = 0; i < h; ++i) {
    const float a = head[i];
    const float b = head[i + h];
    // q * cos + rotate_half(q) * sin, rotate_half(q) = [-q2, q1]; each product rounded, then the sum.
    const float lo = a * cos[i] + (-b) * sin[i];
    const float hi = b * cos[i] + a * sin[i];
    head[i] = lo * scale;
    head[i + h] = hi * scale;
  }
}

int attention_tile_tokens(const AttentionShape& s) {
  const int G = s.heads / s.kv_heads;
  return G >= kAttentionTileRows ? 1 : kAttentionTileRows / G;
}

std::size_t attention_scratch_floats(const AttentionShape& s, std::int64_t max_context) {
  const std::size_t rows = static_cast<std::size_t>(attention_tile_tokens(s)) * (s.heads / s.kv_heads);
  return rows * (static_cast<std::size_t>(max_context) + 2 * static_cast<std::size_t>(s.head_dim));
}

std::size_t attention_rows_floats(const AttentionShape& s, std::int64_t max_context) {
  return 2 * static_cast<std::size_t>(max_context) * static_cast<std::size_t>(s.head_dim);  // keys, then values
}

void attend(const VectorKernels& v, const AttentionShape& s, int b, int kv_head, int t_begin, int t_end, const float* q,
            const float* key_cache, const float* value_cache, float* out, float* scratch, float* rows_copy) {
  const int D = s.head_dim;
  const int G = s.heads / s.kv_heads;
  const std::size_t q_row = static_cast<std::size_t>(s.heads) * D;
  const std::size_t cache_row = static_cast<std::size_t>(s.batch) * s.kv_heads * D;  // one position, all rows
  const float* keys = key_cache + (static_cast<std::size_t>(b) * s.kv_heads + kv_head) * D;
  const float* values = value_cache + (static_cast<std::size_t>(b) * s.kv_heads + kv_head) * D;
  const int tile_tokens = attention_tile_tokens(s);
  const std::size_t tile_rows = static_cast<std::size_t>(tile_tokens) * G;
  // Scratch: the tile's query rows [rows][D], its output rows [rows][D], then its scores.
  float* q_tile = scratch;
  float* out_tile = q_tile + tile_rows * D;
  float* scores = out_tile + tile_rows * D;
  const auto visible = [&](int t) {  // cache rows query token t sees
    const int visible_new = (t / s.block_length + 1) * s.block_length;
    return static_cast<int>(s.past_len + (visible_new < s.tokens ? visible_new : s.tokens));
  };
  const auto row_of = [&](int t, int g) {  // where query (or output) head g of token t starts
    return (static_cast<std::size_t>(b) * s.tokens + t) * q_row + static_cast<std::size_t>(kv_head * G + g) * D;
  };
  // Where the tiles read the head's cached rows. In the cache they lie cache_row floats apart (4 KB
  // at 8 kv heads of 128), which maps a block of them onto the same few sets of L1 and L2: every
  // tile of a range would fetch them again from further out. A range of several tiles copies them
  // next to each other first, each row once, as the tiles come to need it (visible() grows with t);
  // the copy holds the same values, so the tiles give the same bits.
  const float* tile_keys = keys;
  const float* tile_values = values;
  std::size_t tile_stride = cache_row;
  float* key_copy = nullptr;
  float* value_copy = nullptr;
  int copied = 0;
  if (rows_copy != nullptr && t_end - t_begin > tile_tokens) {
    key_copy = rows_copy;
    value_copy = rows_copy + static_cast<std::size_t>(visible(t_end - 1)) * D;
    tile_keys = key_copy;
    tile_values = value_copy;
    tile_stride = D;
  }
  for (int t0 = t_begin; t0 < t_end; t0 += tile_tokens) {
    const int t1 = t0 + tile_tokens < t_end ? t0 + tile_tokens : t_end;
    const int rows = (t1 - t0) * G;
    for (int t = t0; t < t1; ++t) {
      for (int g = 0; g < G; ++g) std::memcpy(q_tile + ((t - t0) * G + g) * D, q + row_of(t, g), D * sizeof(float));
    }
    // Every row of the tile is scored against the keys its last token sees (visible() grows with t);
    // a row's softmax covers its own keys, and its weights past them are exact zeros, which leave
    // each output's chain of fused multiply-adds as it was (acc + 0 * v == acc for the finite
    // values of the rows written so far), so a tile gives the bits of one query at a time.
    const int n = visible(t1 - 1);
    for (; key_copy != nullptr && copied < n; ++copied) {
      std::memcpy(key_copy + static_cast<std::size_t>(copied) * D, keys + copied * cache_row, D * sizeof(float));
      std::memcpy(value_copy + static_cast<std::size_t>(copied) * D, values + copied * cache_row, D * sizeof(float));
    }
    v.dots(q_tile, rows, tile_keys, tile_stride, n, D, scores, n);
    for (int r = 0; r < rows; ++r) {
      float* row = scores + static_cast<std::size_t>(r) * n;
      const int own = visible(t0 + r / G);
      v.softmax(row, own);
      for (int j = own; j < n; ++j) row[j] = 0.0f;
    }
    v.weighted_sum(scores, n, rows, tile_values, tile_stride, n, D, out_tile);
    for (int t = t0; t < t1; ++t) {
      for (int g = 0; g < G; ++g) std::memcpy(out + row_of(t, g), out_tile + ((t - t0) * G + g) * D, D * sizeof(float));
    }
  }
}

}  // namespace sdar::cpu
