// The per-step arguments every unmasking kernel receives (by value), and the two decisions of a
// step as whole-row device functions over step_rules.h, the header the CPU core compiles too:
// which positions are sampled, and which of them are filled.
#pragma once

#include <cstdint>

#include "step_rules.h"

namespace sdar::cuda::detail {

using rules::kEntropyBounded;
using rules::kLowConfidenceDynamic;
using rules::kLowConfidenceStatic;
using rules::kSequential;

// Longest block a step handles (the per-thread chosen flags of select_rows live in registers).
constexpr int kMaxBlockLength = 64;

struct StepArgs {
  const void* logits;
  int vocab;
  int block_length;
  int rows;
  std::int64_t* tokens;
  int tokens_stride;
  std::uint8_t* masked;
  int masked_stride;
  const std::uint8_t* row_done;
  const std::uint32_t* row_ids;
  std::uint32_t* row_steps;
  int block_start;
  int scheduled;
  int policy;
  double threshold;
  double temperature;
  int top_k;
  double top_p;
  std::uint64_t seed;
  // results
  std::int64_t* out_token;  // [rows * L]
  double* out_conf;         // [rows * L]
  std::uint8_t* block_done; // [rows]
  std::int32_t* active_rows;
};

// Whether position (r, j) is sampled this step: a running row's position that step_rules.h
// samples (the CPU core samples exactly the same ones).
__device__ __forceinline__ bool needs_sample(const StepArgs& a, int r, int j) {
  if (a.row_done != nullptr && a.row_done[r]) return false;
  const std::uint8_t* mask = a.masked + static_cast<std::size_t>(r) * a.masked_stride;
  return rules::samples_position(mask, a.block_length, j, a.policy, a.scheduled);
}

// Confidences written by other blocks of the same grid: read them past L1.
struct CoherentConfidence {
  const double* conf;
  __device__ double operator()(int j) const { return __ldcg(conf + j); }
};

// Remasking for every row, run by one thread block after all positions are sampled: the
// positions step_rules.h chooses get their sampled token and lose their mask, the row's step is
// counted, and block_done / active_rows are published. Sampled tokens come from other blocks of
// the same grid: read them past L1.
__device__ inline void select_rows(const StepArgs& a) {
  __shared__ int active;
  if (threadIdx.x == 0) active = 0;
  __syncthreads();
  const int L = a.block_length;
  for (int r = threadIdx.x; r < a.rows; r += blockDim.x) {
    if (a.row_done != nullptr && a.row_done[r]) {
      a.block_done[r] = 1;
      continue;
    }
    std::uint8_t* mask = a.masked + static_cast<std::size_t>(r) * a.masked_stride;
    std::int64_t* tokens = a.tokens + static_cast<std::size_t>(r) * a.tokens_stride;
    const std::int64_t* sampled = a.out_token + static_cast<std::size_t>(r) * L;
    const int count = rules::masked_count(mask, L);
    if (count == 0) {  // finished block: untouched, and its step counter does not move (rule 8)
      a.block_done[r] = 1;
      continue;
    }
    std::uint8_t chosen[kMaxBlockLength];
    const int filled = rules::choose_positions(mask, L, a.policy, a.threshold, a.scheduled,
                                               CoherentConfidence{a.out_conf + static_cast<std::size_t>(r) * L}, chosen);
    for (int j = 0; j < L; ++j) {
      if (chosen[j]) {
        tokens[j] = __ldcg(sampled + j);
        mask[j] = 0;
      }
    }
    if (a.row_steps != nullptr) a.row_steps[r] += 1;
    const int left = count - filled;
    a.block_done[r] = left == 0 ? 1 : 0;
    if (left > 0) atomicAdd(&active, 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) *a.active_rows = active;
}

}  // namespace sdar::cuda::detail
