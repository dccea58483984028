#include "cpu_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>

#include "cpu_features.h"
#include "errors.h"
#include "transformer_ops.h"

namespace sdar::cpu {

const char* phase_name(Phase phase) {
  switch (phase) {
    case Phase::Qkv: return "qkv";
    case Phase::Attention: return "attention";
    case Phase::O: return "o_proj";
    case Phase::GateUp: return "gate_up";
    case Phase::Down: return "down";
    case Phase::LmHead: return "lm_head";
    case Phase::Other: return "other";
    case Phase::Count: break;
  }
  return "unknown";
}

void CpuEngine::lap(Phase phase) {
  const auto now = std::chrono::steady_clock::now();
  phase_seconds_[static_cast<int>(phase)] += std::chrono::duration<double>(now - mark_).count();
  mark_ = now;
}

CpuEngine::CpuEngine(std::shared_ptr<const CpuModel> model, const CpuEngineOptions& options)
    : model_(std::move(model)),
      activations_(options.activations),
      pool_(options.threads),
      matmul_(select_kernels(options.kernels), pool_),
      vec_(matmul_.kernels().vec) {
  if (options.threads < 1) throw InvalidArgument("CPU engine: threads must be at least 1, got " + std::to_string(options.threads));
  const int D = model_->dims().head_dim;
  q_scale_ = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
}

template <class F>
void CpuEngine::for_rows(int rows, int cost_per_row, F&& f) {
  // Below ~8K values the pool's hand-off costs more than it saves. (At 64K, the per-head norms and
  // RoPE and the SwiGLU of a block of 4 or 8 rows stayed on one thread while the other spun; over
  // both they took ~0.1-0.2 ms less per forward at the 0.6B shape.)
  if (pool_.size() == 1 || static_cast<long long>(rows) * cost_per_row < 8192) {
    for (int r = 0; r < rows; ++r) f(r);
    return;
  }
  pool_.parallel_ranges(rows, [&](int, int begin, int end) {
    for (int r = begin; r < end; ++r) f(r);
  });
}

void CpuEngine::bind(const EngineBindings& b) {
  const CpuModelDims& d = model_->dims();
  const std::string where = model_->path() + ": ";
  if (b.device_memory) {
    throw EngineError("the CPU engine runs on host buffers; create the Generator with device='cpu' (or no device)");
  }
  if (b.kv_dtype != DType::Float32) {
    throw EngineError("the CPU engine keeps its KV cache in float32; this artifact's cache is " + dtype_name(b.kv_dtype) +
                      ": export with float32 weights (with --int4 / --int8 if wanted), or use engine='ort'");
  }
  const auto check = [&](int got, int want, const char* what) {
    if (got != want) {
      throw EngineError(where + "the weight file has " + what + " " + std::to_string(want) + ", the artifact " +
                        std::to_string(got) + "; re-export the artifact");
    }
  };
  check(b.num_layers, d.num_layers, "num_layers");
  check(b.num_kv_heads, d.num_kv_heads, "num_kv_heads");
  check(b.head_dim, d.head_dim, "head_dim");
  check(b.vocab_size, d.vocab_size, "vocab_size");
  if (b.batch < 1 || b.ids_capacity < b.block_length || b.block_length < 1 || b.max_context < 1) {
    throw EngineError("CPU engine: invalid bindings (batch, ids capacity, block length or context)");
  }
  if (b.row_bytes != static_cast<std::size_t>(b.batch) * d.num_kv_heads * d.head_dim * sizeof(float)) {
    throw EngineError("CPU engine: the cache row size does not match [batch, kv_heads, head_dim] float32");
  }
  b_ = b;
  const std::size_t rows = static_cast<std::size_t>(b.batch) * b.ids_capacity;
  const int D = d.head_dim;
  const std::size_t qkv_cols = static_cast<std::size_t>(d.num_heads + 2 * d.num_kv_heads) * D;
  const std::size_t attn_cols = static_cast<std::size_t>(d.num_heads) * D;
  x_.assign(rows * d.hidden_size, 0.0f);
  h_.assign(rows * std::max<std::size_t>(d.hidden_size, attn_cols), 0.0f);
  qkv_.assign(rows * qkv_cols, 0.0f);
  attn_.assign(rows * attn_cols, 0.0f);
  proj_.assign(rows * d.hidden_size, 0.0f);
  gate_up_.assign(rows * 2 * static_cast<std::size_t>(d.intermediate_size), 0.0f);
  act_.assign(rows * d.intermediate_size, 0.0f);
  // Attention scratch per thread (a thread runs one task at a time, whatever the batch and heads):
  // attend()'s tile scratch, then its copy of a head's cached rows.
  AttentionShape tile;
  tile.heads = d.num_heads;
  tile.kv_heads = d.num_kv_heads;
  tile.head_dim = D;
  attention_tile_floats_ = attention_scratch_floats(tile, b.max_context);
  attention_scratch_.reserve((attention_tile_floats_ + attention_rows_floats(tile, b.max_context)) * sizeof(float),
                             pool_.size());
  matmul_.reserve(static_cast<int>(rows), model_->max_cols());
  // RoPE tables of every position, float32 as the graphs compute them: cos((float)pos * inv_freq).
  const int half = D / 2;
  cos_.assign(static_cast<std::size_t>(b.max_context) * half, 0.0f);
  sin_.assign(cos_.size(), 0.0f);
  const float* inv_freq = model_->rope_inv_freq();
  for (int pos = 0; pos < b.max_context; ++pos) {
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(pos) * inv_freq[i];
      cos_[static_cast<std::size_t>(pos) * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_[static_cast<std::size_t>(pos) * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  bound_ = true;
}

void CpuEngine::run(GraphKind kind, std::int64_t past_len, int tokens) {
  if (!bound_) throw EngineError("CPU engine: run() before bind()");
  if (tokens < 1 || tokens > b_.ids_capacity || tokens % b_.block_length != 0 || past_len < 0 ||
      past_len + tokens > b_.max_context) {
    throw EngineError("CPU engine: a step of " + std::to_string(tokens) + " tokens after " + std::to_string(past_len) +
                      " cached rows does not fit the bindings");
  }
  const auto start = std::chrono::steady_clock::now();
  mark_ = start;
  const CpuModelDims& d = model_->dims();
  const int rows = b_.batch * tokens;
  const auto* ids = reinterpret_cast<const std::int64_t*>(b_.input_ids);
  for (int r = 0; r < rows; ++r) {
    if (ids[r] < 0 || ids[r] >= d.vocab_size) {
      throw EngineError("CPU engine: token id " + std::to_string(ids[r]) + " is outside the vocabulary [0, " +
                        std::to_string(d.vocab_size) + ")");
    }
  }
  for_rows(rows, d.hidden_size, [&](int r) {
    matrix_row(model_->embed(), static_cast<int>(ids[r]), x_.data() + static_cast<std::size_t>(r) * d.hidden_size);
  });
  for (int l = 0; l < d.num_layers; ++l) forward_layer(l, past_len, tokens);
  if (kind != GraphKind::Prefill) head(tokens);
  lap(Phase::Other);
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++runs_;
}

void CpuEngine::forward_layer(int layer, std::int64_t past_len, int tokens) {
  const CpuModelDims& d = model_->dims();
  const LayerWeights& w = model_->layer(layer);
  const int rows = b_.batch * tokens;
  const int H = d.hidden_size;
  const int D = d.head_dim;
  const int q_cols = d.num_heads * D;
  const int kv_cols = d.num_kv_heads * D;
  const int qkv_cols = q_cols + 2 * kv_cols;
  const int I = d.intermediate_size;
  auto* key_cache = reinterpret_cast<float*>(b_.key_cache[layer]);
  auto* value_cache = reinterpret_cast<float*>(b_.value_cache[layer]);
  const std::size_t cache_row = static_cast<std::size_t>(b_.batch) * kv_cols;

  // Attention block: RMSNorm -> q, k, v in one matmul -> per-head norm + RoPE -> K/V into the
  // cache rows right after the prefix -> attention against the cache -> o_proj -> residual.
  for_rows(rows, H, [&](int r) {
    rms_norm(vec_, x_.data() + static_cast<std::size_t>(r) * H, w.input_norm, h_.data() + static_cast<std::size_t>(r) * H, H,
             d.rms_norm_eps);
  });
  lap(Phase::Other);
  matmul_(w.qkv, h_.data(), rows, H, qkv_.data(), qkv_cols, activations_);
  lap(Phase::Qkv);
  for_rows(rows, qkv_cols, [&](int r) {
    const int b = r / tokens;
    const int t = r % tokens;
    const std::int64_t pos = past_len + t;
    const float* cos = cos_.data() + static_cast<std::size_t>(pos) * (D / 2);
    const float* sin = sin_.data() + static_cast<std::size_t>(pos) * (D / 2);
    float* row = qkv_.data() + static_cast<std::size_t>(r) * qkv_cols;
    for (int h = 0; h < d.num_heads; ++h) norm_rope(vec_, row + h * D, w.q_norm, cos, sin, D, d.rms_norm_eps, q_scale_);
    float* k = row + q_cols;
    for (int h = 0; h < d.num_kv_heads; ++h) norm_rope(vec_, k + h * D, w.k_norm, cos, sin, D, d.rms_norm_eps, 1.0f);
    const std::size_t slot = static_cast<std::size_t>(pos) * cache_row + static_cast<std::size_t>(b) * kv_cols;
    std::memcpy(key_cache + slot, k, kv_cols * sizeof(float));
    std::memcpy(value_cache + slot, k + kv_cols, kv_cols * sizeof(float));
    // attend() reads q from attn_-sized rows: copy the query heads there.
    std::memcpy(h_.data() + static_cast<std::size_t>(r) * q_cols, row, q_cols * sizeof(float));
  });
  AttentionShape shape;
  shape.batch = b_.batch;
  shape.tokens = tokens;
  shape.block_length = b_.block_length;
  shape.heads = d.num_heads;
  shape.kv_heads = d.num_kv_heads;
  shape.head_dim = D;
  shape.past_len = past_len;
  lap(Phase::Other);
  // Tasks: (batch row, kv head, range of tokens); a long prompt's tokens are split where there are
  // fewer heads than a few per worker.
  const int heads_in_batch = b_.batch * d.num_kv_heads;
  const int tiles = (tokens + attention_tile_tokens(shape) - 1) / attention_tile_tokens(shape);
  const int ranges = attention_ranges(heads_in_batch, tiles);
  const int attention_tasks = heads_in_batch * ranges;
  const auto attend_task = [&](int task) {
    const int head = task / ranges;
    const int range = task % ranges;
    float* scratch = reinterpret_cast<float*>(attention_scratch_.slot(pool_));
    attend(vec_, shape, head / d.num_kv_heads, head % d.num_kv_heads, tokens * range / ranges,
           tokens * (range + 1) / ranges, h_.data(), key_cache, value_cache, attn_.data(), scratch,
           scratch + attention_tile_floats_);
  };
  // Only a few microseconds of work stay on this thread (the pool's hand-off would cost more): at the
  // 0.6B shape a block of 4 over 32 cached positions is ~0.6M multiply-adds per layer, and splitting
  // it over 2 threads cut the attention's share of a forward from 1.8 to 1.2 ms.
  const double attention_macs = 2.0 * rows * d.num_heads * static_cast<double>(past_len + tokens) * D;
  if (attention_macs < 1e5) {
    for (int task = 0; task < attention_tasks; ++task) attend_task(task);
  } else {
    pool_.parallel_for(attention_tasks, attend_task);
  }
  lap(Phase::Attention);
  matmul_(w.o, attn_.data(), rows, q_cols, proj_.data(), H, activations_);
  lap(Phase::O);
  for_rows(rows, H, [&](int r) {
    float* x = x_.data() + static_cast<std::size_t>(r) * H;
    const float* p = proj_.data() + static_cast<std::size_t>(r) * H;
    for (int i = 0; i < H; ++i) x[i] += p[i];
    rms_norm(vec_, x, w.post_norm, h_.data() + static_cast<std::size_t>(r) * H, H, d.rms_norm_eps);
  });

  // MLP block: gate and up in one matmul -> SiLU(gate) * up -> down -> residual.
  lap(Phase::Other);
  matmul_(w.gate_up, h_.data(), rows, H, gate_up_.data(), 2 * I, activations_);
  lap(Phase::GateUp);
  for_rows(rows, 2 * I, [&](int r) {
    const float* gu = gate_up_.data() + static_cast<std::size_t>(r) * 2 * I;
    vec_.silu_mul(gu, gu + I, act_.data() + static_cast<std::size_t>(r) * I, I);
  });
  lap(Phase::Other);
  matmul_(w.down, act_.data(), rows, I, proj_.data(), H, activations_);
  lap(Phase::Down);
  for_rows(rows, H, [&](int r) {
    float* x = x_.data() + static_cast<std::size_t>(r) * H;
    const float* p = proj_.data() + static_cast<std::size_t>(r) * H;
    for (int i = 0; i < H; ++i) x[i] += p[i];
  });
}

void CpuEngine::head(int tokens) {
  // Logits of the last L positions of every batch row: final RMSNorm, LM head.
  const CpuModelDims& d = model_->dims();
  const int H = d.hidden_size;
  const int L = b_.block_length;
  const int rows = b_.batch * L;
  for (int r = 0; r < rows; ++r) {
    const int b = r / L;
    const int t = tokens - L + r % L;
    rms_norm(vec_, x_.data() + (static_cast<std::size_t>(b) * tokens + t) * H, model_->final_norm(),
             h_.data() + static_cast<std::size_t>(r) * H, H, d.rms_norm_eps);
  }
  lap(Phase::Other);
  matmul_(model_->lm_head(), h_.data(), rows, H, reinterpret_cast<float*>(b_.logits), d.vocab_size, activations_);
  lap(Phase::LmHead);
}

}  // namespace sdar::cpu
