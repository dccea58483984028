// Greedy denoising step in one launch. Grid (chunks, positions): each block reduces one chunk
// of one position's logits row to (max, lowest argmax, sum exp(l - chunk max) in float64); the
// last block of a position merges its chunks (sum_c s_c * exp(m_c - M)) into the token and the
// confidence 1 / sum; the last block of the whole grid runs the remasking for all rows. Splitting
// a row over many blocks is what fills the GPU when B * L is only 4 positions; the last-block
// pattern saves the separate merge and select launches.
//
// A row whose confidences cannot decide the step (step_rules.h confidence_decides: the same rule
// the host step applies) skips the float64 softmax sum, the only float64 work per logit (Orin's
// GPU is slow at float64): its positions get the argmax and a NaN confidence, as on the host.
//
// Race-free by construction: every block of the grid, sampled position or not, reads the masks
// (needs_sample) before it counts itself in `grid_arrivals`, and the remasking (the only writer
// of the masks) runs in the block that arrives last. So no block can read a mask the remasking
// already changed, and the set of chunks that count a position's arrival is the set that saw it
// sampled: every position counter returns to zero.
#include "cuda/cuda_check.h"
#include "device_common.cuh"
#include "launch.h"
#include "step_args.cuh"

namespace sdar::cuda::detail {

namespace {

constexpr int kThreads = 256;

// The last chunk of position p to arrive merges the chunks' partials (written by other blocks:
// read past L1) into the token and the confidence, and resets the position's counter. Every
// thread of the block calls it (block reductions).
__device__ void merge_chunks(const StepArgs& a, const GreedyScratch& s, int p, int chunks, bool softmax) {
  __threadfence();
  const std::size_t base = static_cast<std::size_t>(p) * kMaxChunks;
  ArgMax merged{-INFINITY, INT_MAX};
  if (static_cast<int>(threadIdx.x) < chunks) {
    merged = ArgMax{__ldcg(s.partial_max + base + threadIdx.x), __ldcg(s.partial_index + base + threadIdx.x)};
  }
  merged = block_argmax<kThreads>(merged);
  if (!softmax) {  // block-uniform: every thread of the block sees the same flag
    if (threadIdx.x == 0) {
      a.out_token[p] = merged.index;
      a.out_conf[p] = __longlong_as_double(0x7ff8000000000000LL);  // never read (confidence_decides)
      s.position_arrivals[p] = 0;
    }
    return;
  }
  double total = 0.0;
  if (static_cast<int>(threadIdx.x) < chunks) {
    const float chunk_max = __ldcg(s.partial_max + base + threadIdx.x);
    if (chunk_max != -INFINITY) {  // an all -inf chunk adds nothing (exp(-inf) = 0)
      total = __ldcg(s.partial_sum + base + threadIdx.x) *
              exp(static_cast<double>(chunk_max) - static_cast<double>(merged.value));
    }
  }
  total = block_sum<kThreads>(total);
  // entropy_bounded ranks entropies: the chunks' sum exp(l - m_c) * (l - m_c) rebased to the
  // row's max M, exp(m_c - M) * (t_c + (m_c - M) * s_c), then step_rules.h's formula.
  const bool entropy = a.policy == kEntropyBounded;
  double moment = 0.0;
  if (entropy && static_cast<int>(threadIdx.x) < chunks) {
    const float chunk_max = __ldcg(s.partial_max + base + threadIdx.x);
    if (chunk_max != -INFINITY) {
      const double shift = static_cast<double>(chunk_max) - static_cast<double>(merged.value);
      const double chunk_sum = __ldcg(s.partial_sum + base + threadIdx.x);
      moment = exp(shift) * (__ldcg(s.partial_moment + base + threadIdx.x) + shift * chunk_sum);
    }
  }
  if (entropy) moment = block_sum<kThreads>(moment);
  if (threadIdx.x == 0) {
    a.out_token[p] = merged.index;
    // All -inf row: the CPU computes 1 / sum(exp(-inf - -inf)) = NaN; keep the same answer.
    const double score = entropy ? rules::entropy_from_sums(total, moment) : 1.0 / total;
    a.out_conf[p] = merged.value == -INFINITY ? __longlong_as_double(0x7ff8000000000000LL) : score;
    s.position_arrivals[p] = 0;  // ready for the next launch
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    greedy_step_kernel(const StepArgs a, const GreedyScratch s, const int chunks, const bool vectorized) {
  __shared__ bool sampled;
  __shared__ bool softmax;
  __shared__ bool position_last;
  __shared__ bool grid_last;
  const int p = blockIdx.y;
  const int r = p / a.block_length;
  const int j = p - r * a.block_length;
  const int c = blockIdx.x;
  const int V = a.vocab;
  if (threadIdx.x == 0) {
    sampled = needs_sample(a, r, j);
    softmax = sampled && rules::confidence_decides(a.masked + static_cast<std::size_t>(r) * a.masked_stride,
                                                   a.block_length, a.policy, a.scheduled);
  }
  __syncthreads();

  if (!sampled) {
    if (c == 0 && threadIdx.x == 0) {
      a.out_token[p] = -1;
      a.out_conf[p] = 0.0;
    }
  } else {
    constexpr int kWidth = Vec<T>::kWidth;
    const T* row = static_cast<const T*>(a.logits) + static_cast<std::size_t>(p) * V;
    const int per_chunk = ((V + chunks - 1) / chunks + kWidth - 1) / kWidth * kWidth;
    const int begin = min(V, c * per_chunk);
    const int end = min(V, begin + per_chunk);

    // Pass 1: chunk max and its lowest index. Each thread walks its elements in ascending
    // order and replaces only on a strictly larger value, so it keeps its lowest argmax.
    ArgMax best{-INFINITY, INT_MAX};
    if (vectorized) {
      for (int i = begin + static_cast<int>(threadIdx.x) * kWidth; i < end; i += kThreads * kWidth) {
        float v[kWidth];
        load_vec(row + i, v);
#pragma unroll
        for (int k = 0; k < kWidth; ++k) best = better(best, ArgMax{v[k], i + k});
      }
    } else {
      for (int i = begin + static_cast<int>(threadIdx.x); i < end; i += kThreads) {
        best = better(best, ArgMax{to_float(row[i]), i});
      }
    }
    best = block_argmax<kThreads>(best);

    // Pass 2 (the chunk is in L1/L2 now): sum exp(l - chunk max) in float64.
    const double top = static_cast<double>(best.value);
    double sum = 0.0;
    if (softmax && best.value != -INFINITY) {
      if (vectorized) {
        for (int i = begin + static_cast<int>(threadIdx.x) * kWidth; i < end; i += kThreads * kWidth) {
          float v[kWidth];
          load_vec(row + i, v);
#pragma unroll
          for (int k = 0; k < kWidth; ++k) sum += exp(static_cast<double>(v[k]) - top);
        }
      } else {
        for (int i = begin + static_cast<int>(threadIdx.x); i < end; i += kThreads) {
          sum += exp(static_cast<double>(to_float(row[i])) - top);
        }
      }
    }
    sum = block_sum<kThreads>(sum);
    // entropy_bounded: also sum exp(l - chunk max) * (l - chunk max), terms with exp = 0 left out.
    double moment = 0.0;
    if (a.policy == kEntropyBounded) {
      if (best.value != -INFINITY) {
        for (int i = begin + static_cast<int>(threadIdx.x); i < end; i += kThreads) {
          const double d = static_cast<double>(to_float(row[i])) - top;
          const double w = exp(d);
          if (w != 0.0) moment += w * d;
        }
      }
      moment = block_sum<kThreads>(moment);
    }

    const std::size_t slot = static_cast<std::size_t>(p) * kMaxChunks + c;
    if (threadIdx.x == 0) {
      s.partial_max[slot] = best.value;
      s.partial_index[slot] = best.index;
      s.partial_sum[slot] = sum;
      s.partial_moment[slot] = moment;
      __threadfence();  // publish the partials before counting this chunk as arrived
      position_last = atomicAdd(&s.position_arrivals[p], 1u) == static_cast<unsigned>(chunks - 1);
    }
    __syncthreads();
    if (position_last) merge_chunks(a, s, p, chunks, softmax);
  }

  // Every block counts itself; the last one of the grid selects for every row.
  __threadfence();
  if (threadIdx.x == 0) {
    const unsigned blocks = gridDim.x * gridDim.y;
    grid_last = atomicAdd(s.grid_arrivals, 1u) == blocks - 1;
  }
  __syncthreads();
  if (!grid_last) return;
  __threadfence();
  if (threadIdx.x == 0) *s.grid_arrivals = 0;
  select_rows(a);
}

template <typename T>
void launch_typed(const StepArgs& args, const GreedyScratch& scratch, int chunks, bool vectorized,
                  cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(args.rows * args.block_length));
  greedy_step_kernel<T><<<grid, kThreads, 0, stream>>>(args, scratch, chunks, vectorized);
  check_launch("greedy_step_kernel");
}

}  // namespace

int greedy_chunks(int positions, int vocab, int sm_count) {
  const int wanted = (2 * sm_count + positions - 1) / positions;
  // A chunk below ~2 loads per thread wastes the block on its fixed costs.
  const int useful = (vocab + 2 * kThreads * 4 - 1) / (2 * kThreads * 4);
  return max(1, min(kMaxChunks, min(wanted, useful)));
}

void launch_greedy_step(const StepArgs& args, LogitsType type, const GreedyScratch& scratch, int chunks,
                        bool vectorized, cudaStream_t stream) {
  switch (type) {
    case LogitsType::Float32: return launch_typed<float>(args, scratch, chunks, vectorized, stream);
    case LogitsType::Float16: return launch_typed<__half>(args, scratch, chunks, vectorized, stream);
    case LogitsType::BFloat16: return launch_typed<__nv_bfloat16>(args, scratch, chunks, vectorized, stream);
  }
}

}  // namespace sdar::cuda::detail
