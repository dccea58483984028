// The native CPU engine: runs the exported SDAR network's math (dense Qwen3 decoder, block-causal
// attention against the KV cache prefix in place) on the packed weights sdar-export writes, behind
// the same Engine interface as ONNX Runtime and TensorRT. Everything a step needs is allocated in
// bind(); a step runs entirely in C++ on the engine's thread pool.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpu_model.h"
#include "engine.h"
#include "matmul.h"
#include "thread_pool.h"
#include "thread_scratch.h"

namespace sdar::cpu {

// Where the engine's time goes, summed over runs (seconds): each matmul by weight, attention, and
// the rest of a step (embedding, norms, RoPE, SwiGLU, residuals).
enum class Phase { Qkv, Attention, O, GateUp, Down, LmHead, Other, Count };
const char* phase_name(Phase phase);

struct CpuEngineOptions {
  int threads = 1;                            // workers including the calling thread
  std::string kernels = "auto";               // see cpu_features.h
  Activations activations = Activations::Int8;  // what quantized weights multiply
};

class CpuEngine final : public Engine {
 public:
  CpuEngine(std::shared_ptr<const CpuModel> model, const CpuEngineOptions& options);

  // Checks the bindings against the model (layers, heads, vocabulary, host memory, float32 cache)
  // and sizes every buffer for batch * ids_capacity rows.
  void bind(const EngineBindings& bindings) override;
  void run(GraphKind kind, std::int64_t past_len, int tokens) override;
  // The sampling of a step runs on the pool too: its workers are idle (spinning) between passes.
  void run_host_tasks(int tasks, void (*fn)(void* context, int task), void* context) override {
    pool_.run(tasks, fn, context);
  }
  int host_threads() const override { return pool_.size(); }

  const char* kernels() const { return matmul_.kernels().name; }
  // Whether its quantized matmuls of many rows (a prefill's) take the AMX path (matmul.h).
  bool amx() const { return matmul_.amx(); }
  int threads() const { return pool_.size(); }
  long runs() const { return runs_; }
  double seconds() const { return seconds_; }
  double phase_seconds(Phase phase) const { return phase_seconds_[static_cast<int>(phase)]; }

 private:
  void forward_layer(int layer, std::int64_t past_len, int tokens);
  void head(int tokens);
  // f(row) for rows [0, rows), over the pool when the rows are many.
  template <class F>
  void for_rows(int rows, int cost_per_row, F&& f);
  // Token ranges per attention task of `heads` (batch rows x kv heads), each range at least one tile
  // of the `tiles`: where the heads alone are fewer, enough ranges for the pool's few tasks per worker
  // (ThreadPool::range_tasks).
  int attention_ranges(int heads, int tiles) const {
    const int wanted = ThreadPool::range_tasks(heads * tiles, pool_.size());
    return std::clamp((wanted + heads - 1) / heads, 1, tiles);
  }

  std::shared_ptr<const CpuModel> model_;
  Activations activations_;
  ThreadPool pool_;
  Matmul matmul_;
  const VectorKernels& vec_;
  EngineBindings b_;
  bool bound_ = false;
  float q_scale_ = 1.0f;
  std::vector<float> x_;       // residual stream [rows][hidden]
  std::vector<float> h_;       // normed input of a matmul [rows][max(hidden, heads * D)]
  std::vector<float> qkv_;     // [rows][(heads + 2 kv_heads) * D]
  std::vector<float> attn_;    // [rows][heads * D]
  std::vector<float> proj_;    // o / down output [rows][hidden]
  std::vector<float> gate_up_; // [rows][2 intermediate]
  std::vector<float> act_;     // [rows][intermediate]
  ThreadScratch attention_scratch_;      // per thread: attend()'s scratch, then its rows_copy
  std::size_t attention_tile_floats_ = 0;  // the scratch part (attention_scratch_floats)
  std::vector<float> cos_;     // [max_context][D / 2]
  std::vector<float> sin_;
  long runs_ = 0;
  double seconds_ = 0.0;
  std::array<double, static_cast<int>(Phase::Count)> phase_seconds_{};
  std::chrono::steady_clock::time_point mark_;
  void lap(Phase phase);  // adds the time since the last lap to `phase`
};

}  // namespace sdar::cpu
