// Internal: kernel launchers shared by unmask.cu (host code only; no device code here).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "unmask.h"

namespace sdar::cuda::detail {

struct StepArgs;

// Scratch of the greedy path: per (position, chunk) partial results and the arrival counters of
// the last-block reduction (zero between launches: the last block resets them).
struct GreedyScratch {
  float* partial_max;
  int* partial_index;
  double* partial_sum;
  unsigned int* position_arrivals;  // [positions]
  unsigned int* grid_arrivals;      // [1]
  double* partial_moment;           // entropy_bounded: per (position, chunk) sum exp(l - m) * (l - m)
};

// Scratch of the sampling path (sizes for max positions P and vocab V).
struct SampleScratch {
  double* keys_in;   // [P * V] unnormalised weights
  double* keys_out;  // [P * V] sorted (w desc, index asc)
  int* values_in;    // [P * V] token ids
  int* values_out;   // [P * V]
  int* segment_begin;  // [P]
  int* segment_end;    // [P] == begin for positions not sampled
  double* total;       // [P] sum of w over the whole vocabulary
  double* moment;      // [P] entropy_bounded: sum of w * (z - z_max) over the whole vocabulary
  void* sort_temp;
  std::size_t sort_temp_bytes;
};

constexpr int kMaxChunks = 64;

// Chunks per position for the greedy kernel: enough blocks to fill `sm_count` SMs twice.
int greedy_chunks(int positions, int vocab, int sm_count);

void launch_greedy_step(const StepArgs& args, LogitsType type, const GreedyScratch& scratch, int chunks,
                        bool vectorized, cudaStream_t stream);

std::size_t sample_sort_temp_bytes(int positions, int vocab);
void launch_sample_step(const StepArgs& args, LogitsType type, const SampleScratch& scratch, cudaStream_t stream);

}  // namespace sdar::cuda::detail
