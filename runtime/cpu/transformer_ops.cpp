#include "transformer_ops.h"

#include <cmath>

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

void attend(const VectorKernels& v, const AttentionShape& s, int b, int kv_head, const float* q, const float* key_cache,
            const float* value_cache, float* out, float* scores) {
  const int D = s.head_dim;
  const int G = s.heads / s.kv_heads;
  const std::size_t q_row = static_cast<std::size_t>(s.heads) * D;
  const std::size_t cache_row = static_cast<std::size_t>(s.batch) * s.kv_heads * D;  // one position, all rows
  const float* keys = key_cache + (static_cast<std::size_t>(b) * s.kv_heads + kv_head) * D;
  const float* values = value_cache + (static_cast<std::size_t>(b) * s.kv_heads + kv_head) * D;
  for (int t = 0; t < s.tokens; ++t) {
    const int visible_new = (t / s.block_length + 1) * s.block_length;
    const std::int64_t n = s.past_len + (visible_new < s.tokens ? visible_new : s.tokens);
    for (int g = 0; g < G; ++g) {
      const int head = kv_head * G + g;
      const float* qh = q + (static_cast<std::size_t>(b) * s.tokens + t) * q_row + static_cast<std::size_t>(head) * D;
      const int rows = static_cast<int>(n);
      v.dots(qh, keys, cache_row, rows, D, scores);
      float top = -INFINITY;
      for (int j = 0; j < rows; ++j) top = scores[j] > top ? scores[j] : top;
      const float inv = 1.0f / v.exp_sum(scores, rows, top);
      for (int j = 0; j < rows; ++j) scores[j] *= inv;
      float* oh = out + (static_cast<std::size_t>(b) * s.tokens + t) * q_row + static_cast<std::size_t>(head) * D;
      v.weighted_sum(scores, values, cache_row, rows, D, oh);
    }
  }
}

}  // namespace sdar::cpu
