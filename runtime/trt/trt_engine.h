// TensorRT backend of sdar::Engine: one plan per artifact (built from the `trt` graph) with one
// optimization profile per step kind, run straight on the device KV cache (DESIGN.md "KV cache
// contract"; CONTRACTS.md "Step graph I/O"). NvInfer.h stays out of this header so the core can
// include it freely.
//
// The weights are on the device once (one ICudaEngine); each kind has its own execution context
// (its own profile, shapes and addresses), and all contexts share one device scratch allocation,
// sized for the largest profile and allocated once: only one step runs at a time, on one stream.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "engine.h"

namespace sdar::trt {

// manifest.json's "engines" entry of kind "trt".
struct TrtPlanFile {
  std::string path;                // absolute, or relative to the process's working directory
  std::string gpu;                 // device name it was built on, e.g. "Orin"
  std::string compute_capability;  // e.g. "8.7"
  std::string tensorrt;            // e.g. "10.3.0"
  // The optimization profile of each GraphKind (prefill, decode, fused); -1: not in the plan.
  std::array<int, 3> profiles{{-1, -1, -1}};
};

struct TrtEngineOptions {
  TrtPlanFile plan;
  // Rows of the bound past shape of a decode step are rounded up to a multiple of this, so one
  // CUDA graph serves a whole bucket of past lengths (the graph masks rows >= past_len).
  // 0: bind the exact past length and never capture graphs.
  int past_bucket = 256;
  bool cuda_graphs = true;
  // true: run() returns after the step finished (host consumers of the logits); false: the
  // step is only enqueued on stream() (a GPU consumer on the same stream needs no sync).
  // Bindings that carry a stream (the GPU decoding loop) imply false.
  bool synchronous = true;
  // Stream the engine enqueues on until bind(); null: the engine creates its own non-blocking
  // stream. bind() adopts EngineBindings::stream when it is set.
  cudaStream_t stream = nullptr;
};

class TrtEngine final : public Engine {
 public:
  // Checks that the plan was built for this GPU and this TensorRT (EngineError naming both and
  // the fix otherwise), streams it into TensorRT, creates one context per profile and their shared
  // scratch memory (EngineError with both numbers when the GPU's free memory cannot hold it).
  explicit TrtEngine(const TrtEngineOptions& options);
  ~TrtEngine() override;
  TrtEngine(const TrtEngine&) = delete;
  TrtEngine& operator=(const TrtEngine&) = delete;

  // Needs device bindings (Generator created with sdar::cuda::cuda_allocator()).
  void bind(const EngineBindings& bindings) override;
  void run(GraphKind kind, std::int64_t past_len, int tokens) override;

  cudaStream_t stream() const;
  bool has_graph(GraphKind kind) const;
  // Most tokens one prefill pass may carry (the prefill profile's maximum).
  int max_prefill_tokens() const;
  // Bytes of the contexts' shared scratch memory.
  std::int64_t scratch_bytes() const;
  // CUDA graphs captured so far (decode, one per (token count, past bucket)).
  int captured_graphs() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "X.Y.Z" of the TensorRT library loaded at run time (getInferLibVersion).
std::string tensorrt_runtime_version();

}  // namespace sdar::trt
