// Temperature / top-k / top-p denoising step (runtime/sampler.h's exact rule), in four launches:
//   1. weights: per sampled position, w_i = exp(l_i / T - z_max) in float64, token ids, and the
//      sum of w over the vocabulary; unsampled positions get an empty sort segment;
//   2. a CUB segmented radix sort by w descending — radix sort is stable, so equal weights keep
//      index order: exactly the CPU's (w desc, index asc) candidate order;
//   3. walk: per position, top-k cut, top-p prefix (running sum >= p * Z), the Philox draw
//      (first running sum > u * S), confidence = w / S (entropy_bounded: the entropy instead);
//   4. select: remasking for every row (one block).
// Correctness over speed: the full sort costs far more than the greedy path; sampling is the
// uncommon configuration for SDAR chat models.
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "cuda/cuda_check.h"
#include "device_common.cuh"
#include "launch.h"
#include "step_args.cuh"

namespace sdar::cuda::detail {

namespace {

constexpr int kWeightThreads = 1024;
constexpr int kWalkThreads = 256;
constexpr int kWalkItems = 4;

template <typename T>
__global__ void __launch_bounds__(kWeightThreads) weights_kernel(const StepArgs a, const SampleScratch s) {
  __shared__ bool sampled;
  const int p = blockIdx.x;
  const int r = p / a.block_length;
  const int j = p - r * a.block_length;
  const int V = a.vocab;
  const std::size_t base = static_cast<std::size_t>(p) * V;
  if (threadIdx.x == 0) {
    sampled = needs_sample(a, r, j);
    s.segment_begin[p] = static_cast<int>(base);
    s.segment_end[p] = static_cast<int>(base) + (sampled ? V : 0);
    if (!sampled) {
      a.out_token[p] = -1;
      a.out_conf[p] = 0.0;
    }
  }
  __syncthreads();
  if (!sampled) return;
  const T* row = static_cast<const T*>(a.logits) + base;
  float top = -INFINITY;
  for (int i = threadIdx.x; i < V; i += kWeightThreads) top = fmaxf(top, to_float(row[i]));
  top = block_max<kWeightThreads>(top);
  // x -> fl(x / T) is monotone, so max_i fl(l_i / T) = fl(max_i l_i / T): the CPU's z_max.
  const double t = a.temperature;
  const double z_max = static_cast<double>(top) / t;
  double sum = 0.0;
  double moment = 0.0;  // entropy_bounded: sum of w * (z - z_max), terms with w = 0 left out
  const bool entropy = a.policy == kEntropyBounded;
  for (int i = threadIdx.x; i < V; i += kWeightThreads) {
    const double d = static_cast<double>(to_float(row[i])) / t - z_max;
    const double w = exp(d);
    s.keys_in[base + i] = w;
    s.values_in[base + i] = i;
    sum += w;
    if (entropy && w != 0.0) moment += w * d;
  }
  sum = block_sum<kWeightThreads>(sum);
  if (entropy) moment = block_sum<kWeightThreads>(moment);
  if (threadIdx.x == 0) {
    s.total[p] = sum;
    s.moment[p] = moment;
  }
}

// First index j in [0, count) whose running sum carry + w[0..j] crosses `target` (> when
// strict, >= otherwise), scanning tiles of kWalkThreads * kWalkItems; -1 when none does.
// `running` returns the running sum at j, or the whole sum when none crosses.
__device__ int first_crossing(const double* w, int count, double target, bool strict, double& running) {
  using Scan = cub::BlockScan<double, kWalkThreads>;
  __shared__ typename Scan::TempStorage temp;
  __shared__ int found;
  __shared__ double found_value;
  constexpr int kTile = kWalkThreads * kWalkItems;
  double carry = 0.0;
  for (int tile = 0; tile < count; tile += kTile) {
    if (threadIdx.x == 0) found = INT_MAX;
    double x[kWalkItems];
    const int first = tile + static_cast<int>(threadIdx.x) * kWalkItems;
#pragma unroll
    for (int k = 0; k < kWalkItems; ++k) x[k] = first + k < count ? w[first + k] : 0.0;
    double aggregate = 0.0;
    Scan(temp).InclusiveSum(x, x, aggregate);
    __syncthreads();  // `found` initialised, `temp` free again
#pragma unroll
    for (int k = 0; k < kWalkItems; ++k) {
      const double c = carry + x[k];
      if (first + k < count && (strict ? c > target : c >= target)) {
        atomicMin(&found, first + k);
        break;
      }
    }
    __syncthreads();
    const int hit = found;
    if (hit != INT_MAX) {
      if (hit >= first && hit < first + kWalkItems) found_value = carry + x[hit - first];
      __syncthreads();
      running = found_value;
      return hit;
    }
    carry += aggregate;
  }
  running = carry;
  return -1;
}

__global__ void __launch_bounds__(kWalkThreads) walk_kernel(const StepArgs a, const SampleScratch s) {
  const int p = blockIdx.x;
  const int begin = s.segment_begin[p];
  if (s.segment_end[p] == begin) return;  // not sampled this step
  const int r = p / a.block_length;
  const int j = p - r * a.block_length;
  const int V = a.vocab;
  const double* w = s.keys_out + begin;
  const int* ids = s.values_out + begin;

  // Candidates and Z: the top-k prefix summed in sorted order, else the vocabulary (index order).
  const bool top_k = a.top_k > 0 && a.top_k < V;
  const int size = top_k ? a.top_k : V;
  double total = s.total[p];
  if (top_k) {
    double part = 0.0;
    for (int i = threadIdx.x; i < size; i += kWalkThreads) part += w[i];
    total = block_sum<kWalkThreads>(part);
  }

  int kept = size;
  double kept_sum = total;
  if (a.top_p < 1.0) {
    double running = 0.0;
    const int hit = first_crossing(w, size, a.top_p * total, false, running);
    kept = hit < 0 ? size : hit + 1;
    kept_sum = running;
  }

  const std::uint32_t row_id = a.row_ids != nullptr ? a.row_ids[r] : static_cast<std::uint32_t>(r);
  const std::uint32_t step = a.row_steps != nullptr ? a.row_steps[r] : 0u;
  const double u = rules::philox_uniform(a.seed, row_id, step, static_cast<std::uint32_t>(a.block_start + j));
  double running = 0.0;
  const int hit = first_crossing(w, kept, u * kept_sum, true, running);
  const int chosen = hit < 0 ? kept - 1 : hit;
  if (threadIdx.x == 0) {
    a.out_token[p] = ids[chosen];
    // entropy_bounded ranks the entropy of the whole distribution (before top-k / top-p).
    a.out_conf[p] = a.policy == kEntropyBounded ? rules::entropy_from_sums(s.total[p], s.moment[p])
                                                : w[chosen] / kept_sum;
  }
}

__global__ void select_kernel(const StepArgs a) { select_rows(a); }

template <typename T>
void launch_typed(const StepArgs& a, const SampleScratch& s, cudaStream_t stream) {
  const int positions = a.rows * a.block_length;
  weights_kernel<T><<<positions, kWeightThreads, 0, stream>>>(a, s);
  check_launch("weights_kernel");
  std::size_t temp_bytes = s.sort_temp_bytes;
  check(cub::DeviceSegmentedRadixSort::SortPairsDescending(
            s.sort_temp, temp_bytes, s.keys_in, s.keys_out, s.values_in, s.values_out,
            static_cast<std::int64_t>(positions) * a.vocab, positions, s.segment_begin, s.segment_end, 0,
            static_cast<int>(sizeof(double) * 8), stream),
        "cub::DeviceSegmentedRadixSort::SortPairsDescending");
  check_launch("segmented radix sort");
  walk_kernel<<<positions, kWalkThreads, 0, stream>>>(a, s);
  check_launch("walk_kernel");
  select_kernel<<<1, 256, 0, stream>>>(a);
  check_launch("select_kernel");
}

}  // namespace

std::size_t sample_sort_temp_bytes(int positions, int vocab) {
  std::size_t bytes = 0;
  check(cub::DeviceSegmentedRadixSort::SortPairsDescending(
            nullptr, bytes, static_cast<const double*>(nullptr), static_cast<double*>(nullptr),
            static_cast<const int*>(nullptr), static_cast<int*>(nullptr), static_cast<std::int64_t>(positions) * vocab,
            positions, static_cast<const int*>(nullptr), static_cast<const int*>(nullptr)),
        "sizing the segmented radix sort");
  return bytes;
}

void launch_sample_step(const StepArgs& args, LogitsType type, const SampleScratch& scratch, cudaStream_t stream) {
  switch (type) {
    case LogitsType::Float32: return launch_typed<float>(args, scratch, stream);
    case LogitsType::Float16: return launch_typed<__half>(args, scratch, stream);
    case LogitsType::BFloat16: return launch_typed<__nv_bfloat16>(args, scratch, stream);
  }
}

}  // namespace sdar::cuda::detail
