// The step-graph interface every backend implements (ONNX Runtime through Python, TensorRT).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "model_spec.h"

namespace sdar {

enum class GraphKind { Prefill, Decode, Fused };

const char* graph_name(GraphKind kind);  // "prefill" | "decode" | "fused"

// Everything an engine needs to bind its I/O once. Addresses stay valid for the life of the
// Generator that produced them.
struct EngineBindings {
  std::uintptr_t input_ids = 0;   // int64; a run over T tokens reads a contiguous [B, T] array here
  int ids_capacity = 0;           // max T
  std::uintptr_t logits = 0;      // float32 [B, L, V]
  std::vector<std::uintptr_t> key_cache;    // per layer: base of [max_context, B, KVH, D]
  std::vector<std::uintptr_t> value_cache;  // per layer: base of [max_context, B, KVH, D]
  std::size_t row_bytes = 0;      // bytes of one cache row (B*KVH*D*element)
  int batch = 0;
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_length = 0;
  int vocab_size = 0;
  int max_context = 0;
  DType kv_dtype = DType::Float32;
  bool device_memory = false;     // false: host addresses
  // Device memory only: the CUDA stream (a cudaStream_t as an integer) the decoding loop runs on.
  // A run must be ordered on it: enqueue there, or synchronise it before reading the inputs and
  // finish before returning. 0 on the host.
  std::uintptr_t stream = 0;
};

class Engine {
 public:
  virtual ~Engine() = default;
  // Called once, before any run.
  virtual void bind(const EngineBindings& bindings) = 0;
  // One forward pass: reads input_ids[B, tokens], cache rows [0, past_len); writes the K/V of the
  // new tokens into rows [past_len, past_len + tokens) and, for Decode (tokens = L) and Fused
  // (tokens = 2L), the logits of the last L positions. Prefill writes no logits.
  virtual void run(GraphKind kind, std::int64_t past_len, int tokens) = 0;
  // The host's own work between passes (sampling a step's positions) as `tasks` independent
  // tasks: fn(context, i) for every i, in any order and on any thread, all done on return; fn
  // must not throw. An engine whose threads sit idle between passes (the CPU engine's pool) runs
  // them there; by default they run in order on the calling thread.
  virtual void run_host_tasks(int tasks, void (*fn)(void* context, int task), void* context) {
    for (int i = 0; i < tasks; ++i) fn(context, i);
  }
  // The threads run_host_tasks spreads tasks over.
  virtual int host_threads() const { return 1; }
};

}  // namespace sdar
