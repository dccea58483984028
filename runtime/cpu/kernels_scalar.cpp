// Portable kernels: the reference the vector kernels are tested against, and what runs on a CPU
// without AVX2 (x86-64) or in a build for another architecture. Quantized weights: the same
// integer sums and the same fused float steps as the vector kernels, so the results are equal.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels.h"

namespace sdar::cpu {
namespace {

// Byte offset of row n's part of unit u (32 bytes; the layouts of packed_matrix.h).
std::size_t unit_row_offset(const PackedMatrix& w, int n, int u) {
  const int units = w.format == WeightFormat::Q4 ? (w.cols + 2 * kChunk - 1) / (2 * kChunk) : w.cols / kChunk;
  return ((static_cast<std::size_t>(n / kPanel) * units + u) * kPanel + n % kPanel) * 32;
}

int weight_code(const PackedMatrix& w, int n, int k) {
  const auto* data = static_cast<const std::uint8_t*>(w.data);
  if (w.format == WeightFormat::Q8) return data[unit_row_offset(w, n, k / kChunk) + k % kChunk];
  const std::uint8_t byte = data[unit_row_offset(w, n, k / (2 * kChunk)) + k % kChunk];
  return (k % (2 * kChunk)) < kChunk ? (byte & 0x0F) : (byte >> 4);
}

float f32_weight(const PackedMatrix& w, int n, int k) {
  const std::size_t at = (static_cast<std::size_t>(n / kPanel) * w.cols + k) * kPanel + n % kPanel;
  return static_cast<const float*>(w.data)[at];
}

std::size_t panel_index(const PackedMatrix& w, int n, int g) {
  return (static_cast<std::size_t>(n / kPanel) * w.groups() + g) * kPanel + n % kPanel;
}

float weight_scale(const PackedMatrix& w, int n, int g) { return w.scales[panel_index(w, n, g)]; }

float zero_scale(const PackedMatrix& w, int n, int g) {
  if (w.symmetric) return weight_scale(w, n, g) * symmetric_zero_point(w.format);
  return w.zero_scales[panel_index(w, n, g)];
}

int activation_code(const QuantizedRows& q, int m, int k) {
  return q.q[(static_cast<std::size_t>(k / kChunk) * q.row_capacity + m) * kChunk + k % kChunk];
}

int row_end(const MatmulArgs& a, int panel_end) {
  const int end = panel_end * kPanel;
  return end < a.w.rows ? end : a.w.rows;
}

void f32_kernel(const MatmulArgs& a, int panel_begin, int panel_end) {
  const int K = a.w.cols;
  for (int n = panel_begin * kPanel; n < row_end(a, panel_end); ++n) {
    for (int m = 0; m < a.rows; ++m) {
      const float* xr = a.x + static_cast<std::size_t>(m) * a.ldx;
      float acc = 0.0f;
      for (int k = 0; k < K; ++k) acc = std::fma(f32_weight(a.w, n, k), xr[k], acc);
      a.y[static_cast<std::size_t>(m) * a.ldy + n] = acc;
    }
  }
}

void quantized_kernel(const MatmulArgs& a, int panel_begin, int panel_end) {
  const int K = a.w.cols;
  const int block = a.a.block;
  const int cap = a.a.row_capacity;
  for (int n = panel_begin * kPanel; n < row_end(a, panel_end); ++n) {
    for (int m = 0; m < a.rows; ++m) {
      float acc = 0.0f;
      for (int b = 0; b < K / block; ++b) {
        std::int32_t dot = 0;
        for (int k = b * block; k < (b + 1) * block; ++k) dot += weight_code(a.w, n, k) * activation_code(a.a, m, k);
        const int g = b * block / a.w.group;
        const float sw = weight_scale(a.w, n, g);
        const std::size_t ai = static_cast<std::size_t>(b) * cap + m;
        acc = std::fma(static_cast<float>(dot), sw * a.a.scales[ai], acc);
        acc = std::fma(-zero_scale(a.w, n, g), a.a.sums[ai], acc);
      }
      a.y[static_cast<std::size_t>(m) * a.ldy + n] = acc;
    }
  }
}

void dequantized_kernel(const MatmulArgs& a, int panel_begin, int panel_end) {
  const int K = a.w.cols;
  for (int n = panel_begin * kPanel; n < row_end(a, panel_end); ++n) {
    for (int m = 0; m < a.rows; ++m) {
      const float* xr = a.x + static_cast<std::size_t>(m) * a.ldx;
      float acc = 0.0f;
      for (int k = 0; k < K; ++k) {
        const int g = k / a.w.group;
        const float wv = std::fma(static_cast<float>(weight_code(a.w, n, k)), weight_scale(a.w, n, g), -zero_scale(a.w, n, g));
        acc = std::fma(wv, xr[k], acc);
      }
      a.y[static_cast<std::size_t>(m) * a.ldy + n] = acc;
    }
  }
}

void quantize_kernel(const float* x, int rows, int ldx, int cols, int block, int row_capacity, std::int8_t* q,
                     std::int16_t* q16, float* scales, float* sums) {
  const int blocks = cols / block;
  const auto at = [row_capacity](int m, int k) {  // chunk-major (kernels.h, QuantizedRows)
    return (static_cast<std::size_t>(k / kChunk) * row_capacity + m) * kChunk + k % kChunk;
  };
  for (int m = 0; m < row_capacity; ++m) {
    for (int b = 0; b < blocks; ++b) {
      const std::size_t si = static_cast<std::size_t>(b) * row_capacity + m;
      if (m >= rows) {
        for (int k = b * block; k < (b + 1) * block; ++k) q[at(m, k)] = 0;
        if (q16 != nullptr) for (int k = b * block; k < (b + 1) * block; ++k) q16[at(m, k)] = 0;
        scales[si] = 0.0f;
        sums[si] = 0.0f;
        continue;
      }
      const float* xb = x + static_cast<std::size_t>(m) * ldx + b * block;
      float amax = 0.0f;
      for (int k = 0; k < block; ++k) amax = std::fmax(amax, std::fabs(xb[k]));
      const float scale = amax / 127.0f;
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      std::int32_t sum = 0;
      for (int k = 0; k < block; ++k) {
        const int code = static_cast<int>(std::nearbyint(xb[k] * inv));
        const int clamped = code > 127 ? 127 : (code < -127 ? -127 : code);
        q[at(m, b * block + k)] = static_cast<std::int8_t>(clamped);
        if (q16 != nullptr) q16[at(m, b * block + k)] = static_cast<std::int16_t>(clamped);
        sum += clamped;
      }
      scales[si] = scale;
      sums[si] = scale * static_cast<float>(sum);
    }
  }
}

float dot(const float* a, const float* b, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s = std::fma(a[i], b[i], s);
  return s;
}

// Four keys at a time: each score is still dot()'s one chain, but four independent chains keep the
// multiply-add units busy where one would wait out each fma's latency (the Arm tables use these).
void dots(const float* q, int m, const float* rows, std::size_t stride, int n, int d, float* out,
          std::size_t out_stride) {
  for (int r = 0; r < m; ++r) {
    const float* qr = q + static_cast<std::size_t>(r) * d;
    float* o = out + r * out_stride;
    int j = 0;
    for (; j + 4 <= n; j += 4) {
      const float* k = rows + static_cast<std::size_t>(j) * stride;
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
      for (int i = 0; i < d; ++i) {
        s0 = std::fma(qr[i], k[i], s0);
        s1 = std::fma(qr[i], k[stride + i], s1);
        s2 = std::fma(qr[i], k[2 * stride + i], s2);
        s3 = std::fma(qr[i], k[3 * stride + i], s3);
      }
      o[j] = s0;
      o[j + 1] = s1;
      o[j + 2] = s2;
      o[j + 3] = s3;
    }
    for (; j < n; ++j) o[j] = dot(qr, rows + static_cast<std::size_t>(j) * stride, d);
  }
}

void weighted_sum(const float* w, std::size_t w_stride, int m, const float* rows, std::size_t stride, int n, int d,
                  float* out) {
  for (int r = 0; r < m; ++r) {
    const float* wr = w + r * w_stride;
    float* o = out + static_cast<std::size_t>(r) * d;
    for (int i = 0; i < d; ++i) o[i] = 0.0f;
    for (int j = 0; j < n; ++j) {
      const float* row = rows + static_cast<std::size_t>(j) * stride;
      for (int i = 0; i < d; ++i) o[i] = std::fma(wr[j], row[i], o[i]);
    }
  }
}

void softmax(float* v, int n) {
  float top = -INFINITY;
  for (int i = 0; i < n; ++i) top = v[i] > top ? v[i] : top;
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    v[i] = std::exp(v[i] - top);
    sum += v[i];
  }
  const float inv = 1.0f / sum;
  for (int i = 0; i < n; ++i) v[i] *= inv;
}

void silu_mul(const float* gate, const float* up, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

float sum_squares(const float* x, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s = std::fma(x[i], x[i], s);
  return s;
}

const KernelTable kScalar{"scalar",  f32_kernel, quantized_kernel, dequantized_kernel, quantize_kernel, false, false,
                          VectorKernels{dots, weighted_sum, softmax, silu_mul, sum_squares}};

}  // namespace

const VectorKernels& portable_vector_kernels() { return kScalar.vec; }

const KernelTable& scalar_kernels() { return kScalar; }

}  // namespace sdar::cpu
