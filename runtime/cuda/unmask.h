// One denoising step on the GPU for every row of a batch: sample a token and a confidence per
// still-masked position from the logits [B, L, V], choose the positions to unmask (remasking
// policy, CONTRACTS.md rules 3-5), write their tokens into the block's token buffer, and leave
// per-row "block done" flags plus one "rows still active" count for the host to read. Full
// logits never leave the device.
//
// Exactness (runtime/sampler.h, runtime/step_rules.h):
//   - the Philox uniforms, which positions are sampled and which are filled (ties included) are
//     step_rules.h's code, compiled for the device: the CPU core runs the same source;
//   - tokens and the sort order of candidates are identical to the CPU sampler's;
//   - confidences are float64 like the CPU's but summed in a different order (a parallel tree
//     instead of index order) and with CUDA's exp (<= 1 ulp), so they agree to ~1e-14 relative,
//     not bit for bit. A decision can differ only where two confidences (or a confidence and the
//     threshold, or a cumulative probability and the drawn uniform) are that close;
//   - under entropy_bounded the step ranks each position's entropy (of softmax(logits / T), or of
//     softmax(logits) when greedy, over the whole vocabulary) instead of its confidence: float64
//     sums like the CPU's (sampler.h), in a parallel order, so also ~1e-14 relative.
//
// Plain C++ (no CUDA device code): callable from the core. Nothing is allocated per step: the
// workspace preallocates every scratch buffer for its limits.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "generation_config.h"  // RemaskPolicy

namespace sdar::cuda {

enum class LogitsType { Float32, Float16, BFloat16 };

struct UnmaskLimits {
  int max_batch = 1;      // B
  int block_length = 4;   // L
  int vocab_size = 0;     // V
  bool sampling = true;   // false: greedy only (no sort scratch: ~24 bytes * B * L * V saved)
};

// Device pointers the step reads and writes. Position p = r * L + j (row r, block offset j).
struct UnmaskBuffers {
  const void* logits = nullptr;         // [rows, L, V] of `logits_type`, contiguous
  LogitsType logits_type = LogitsType::Float32;
  std::int64_t* tokens = nullptr;       // block tokens: tokens[r * tokens_stride + j]
  int tokens_stride = 0;                // >= L (e.g. 2L for the current block of a fused input)
  std::uint8_t* masked = nullptr;       // 1 where masked: masked[r * masked_stride + j]
  int masked_stride = 0;                // >= L
  const std::uint8_t* row_done = nullptr;  // [rows] 1: finished row, left untouched; null: none
  const std::uint32_t* row_ids = nullptr;  // [rows] Philox row word; null: the row index
  std::uint32_t* row_steps = nullptr;      // [rows] denoising steps each row has run in this call
                                           // (Philox step word); incremented for rows that ran
};

struct UnmaskParams {
  int rows = 1;             // rows in this call, <= max_batch
  int block_start = 0;      // absolute position of block offset 0 (Philox position word)
  int scheduled = 1;        // s[k] of this step (rule 3); n_k = min(s[k], masked count)
  RemaskPolicy remasking = RemaskPolicy::LowConfidenceDynamic;
  double threshold = 0.9;   // low_confidence_dynamic's; under entropy_bounded the entropy budget
  double temperature = 0.0; // 0: greedy
  int top_k = 0;
  double top_p = 1.0;
  std::uint64_t seed = 0;
};

class UnmaskWorkspace {
 public:
  // Allocates all scratch on the current device; throws DeviceError without a usable GPU.
  explicit UnmaskWorkspace(const UnmaskLimits& limits);
  ~UnmaskWorkspace();
  UnmaskWorkspace(const UnmaskWorkspace&) = delete;
  UnmaskWorkspace& operator=(const UnmaskWorkspace&) = delete;

  const UnmaskLimits& limits() const;

  // Enqueues one step on `stream` (no host sync, no allocation). Greedy: one kernel launch.
  // Throws InvalidArgument for bad parameters, DeviceError for a failed launch.
  void step(const UnmaskBuffers& buffers, const UnmaskParams& params, cudaStream_t stream);

  // The one host sync of a step: copies the count of rows that still have masked positions in
  // their block (finished rows excluded) to pinned memory and waits for it.
  int wait_active_rows(cudaStream_t stream);

  // Device results of the last step, indexed by position p = r * L + j: the sampled token (-1
  // where the position was not sampled) and its confidence (its entropy under entropy_bounded);
  // per row, 1 when no mask is left.
  const std::int64_t* sampled_tokens() const;
  const double* confidences() const;
  const std::uint8_t* block_done() const;
  const std::int32_t* active_rows() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sdar::cuda
