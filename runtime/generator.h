// The generation core: owns the KV cache, the step buffers, the engine and the decoding backend
// (host or GPU, decode_backend.h), and runs CONTRACTS.md's decoding rules 1-9 over a batch of
// equal-length prompts.
//
// Thread safety: generate() holds a mutex for the whole call; a second concurrent call on the
// same Generator blocks until the first returns. All per-call state (past length, masks, row
// status) is local to the call, so the Generator stays usable after any exception.
//
// The KV cache outlives calls: cache_contents() says which tokens each row's committed prefix
// holds, and a call with CallOptions::reuse_cache starts from the longest whole-block prefix of
// its prompts found there. Any call may overwrite the cache; the record follows every call (and
// is empty after a failed one), so reuse is never based on stale K/V.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "buffer.h"
#include "cache_contents.h"
#include "callbacks.h"
#include "cancellation.h"
#include "decode_backend.h"
#include "engine.h"
#include "generation_config.h"
#include "kv_cache.h"
#include "model_spec.h"
#include "stats.h"
#include "step_buffers.h"

namespace sdar {

struct RowResult {
  std::vector<std::int64_t> tokens;  // output tokens (stop token excluded)
  std::string finish_reason;         // "stop" | "length" | "cancelled"
};

struct GenerationResult {
  std::vector<RowResult> rows;  // one per prompt, in order
  Stats stats;
};

class Generator {
 public:
  // The CPU path: cache and buffers in host memory, steps decided by the CPU sampler.
  Generator(const ModelSpec& spec, std::shared_ptr<Engine> engine);
  // Any backend, e.g. cuda::DeviceBackend for the GPU path.
  Generator(const ModelSpec& spec, std::shared_ptr<Engine> engine, std::unique_ptr<DecodeBackend> backend);

  // prompts: 1..B token-id lists of equal, non-zero length. Validates everything before any work.
  // `cancel` is consulted before every engine pass (cancellation.h).
  GenerationResult generate(const std::vector<std::vector<std::int64_t>>& prompts,
                            const GenerationConfig& config, const BlockCallback& on_block = {},
                            const Cancellation& cancel = {});
  // The same with a step callback, cache reuse and cancellation (callbacks.h).
  GenerationResult generate(const std::vector<std::vector<std::int64_t>>& prompts, const GenerationConfig& config,
                            const CallOptions& options);

  const ModelSpec& spec() const { return spec_; }
  const EngineBindings& bindings() const { return bindings_; }
  const KvCache& cache() const { return cache_; }
  // The token ids whose K/V the committed prefix of cache row `row` holds (after the last call).
  std::vector<std::int64_t> cached_tokens(int row);

 private:
  struct Plan;  // validated per-call numbers
  Plan validate(const std::vector<std::vector<std::int64_t>>& prompts, const GenerationConfig& config) const;
  GenerationResult decode(const std::vector<std::vector<std::int64_t>>& prompts, const GenerationConfig& config,
                          const CallOptions& options);

  const ModelSpec spec_;
  std::shared_ptr<Engine> engine_;
  std::unique_ptr<DecodeBackend> backend_;
  KvCache cache_;
  StepBuffers buffers_;
  EngineBindings bindings_;
  CacheContents contents_;
  std::mutex mutex_;
};

}  // namespace sdar
