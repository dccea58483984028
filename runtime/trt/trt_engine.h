// TensorRT backend of sdar::Engine: runs the prefill / decode / fused .plan engines of an
// artifact straight on the device KV cache (DESIGN.md "KV cache contract"; CONTRACTS.md "Step
// graph I/O"). NvInfer.h stays out of this header so the core can include it freely.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <string>
#include <vector>

#include "engine.h"

namespace sdar::trt {

// One engine entry of manifest.json's "engines" list (kind "trt").
struct TrtEngineFile {
  GraphKind graph = GraphKind::Decode;
  std::string path;                // absolute, or relative to the process's working directory
  std::string gpu;                 // device name it was built on, e.g. "Orin"
  std::string compute_capability;  // e.g. "8.7"
  std::string tensorrt;            // e.g. "10.3.0"
};

struct TrtEngineOptions {
  std::vector<TrtEngineFile> engines;  // at least prefill and decode; fused optional
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
  // Deserialises every engine after checking that it was built for this GPU and this TensorRT;
  // throws EngineError naming both and the fix otherwise.
  explicit TrtEngine(const TrtEngineOptions& options);
  ~TrtEngine() override;
  TrtEngine(const TrtEngine&) = delete;
  TrtEngine& operator=(const TrtEngine&) = delete;

  // Needs device bindings (Generator created with sdar::cuda::cuda_allocator()).
  void bind(const EngineBindings& bindings) override;
  void run(GraphKind kind, std::int64_t past_len, int tokens) override;

  cudaStream_t stream() const;
  bool has_graph(GraphKind kind) const;
  // CUDA graphs captured so far (decode, one per past bucket).
  int captured_graphs() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "X.Y.Z" of the TensorRT library loaded at run time (getInferLibVersion).
std::string tensorrt_runtime_version();

}  // namespace sdar::trt
