// The rules of one denoising step that do not depend on where it runs, written once and compiled
// for both sides: the CPU core (philox.cpp, remask.cpp, host_backend.cpp) and the CUDA kernels
// (runtime/cuda/*.cu) include this header, so the C++ and Python tests that exercise the host run
// the very code the GPU runs. Plain C++17 without the standard library's containers: nvcc compiles
// it for the device, where SDAR_HOST_DEVICE is `__host__ __device__`; the host compiler sees it
// empty.
//
// What lives here (CONTRACTS.md decoding rules 3, 5 and 9):
//   - Philox-4x32-10 and the one uniform drawn per (row, step, position);
//   - which masked positions a step samples (sequential: only the first n_k);
//   - which of them it fills (sequential / static / dynamic / entropy-bounded, ties to the lower
//     position), and the entropy of a distribution from its two float64 sums.
// The sampler (sampler.h) is not here: the GPU computes the same float64 quantities with parallel
// reductions, so it is a second implementation by design, compared in tests/test_gpu_kernels.py.
#pragma once

#include <math.h>

#include <cstdint>

#if defined(__CUDACC__)
#define SDAR_HOST_DEVICE __host__ __device__
#else
#define SDAR_HOST_DEVICE
#endif

namespace sdar::rules {

// RemaskPolicy as an int (generation_config.h's enum order; remask.cpp checks the two agree).
constexpr int kSequential = 0;
constexpr int kLowConfidenceStatic = 1;
constexpr int kLowConfidenceDynamic = 2;
constexpr int kEntropyBounded = 3;

// ---- Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) ------

struct Philox4x32 {
  std::uint32_t word[4];
};

// Ten rounds over `counter` with `key` = {key0, key1}, from the published constants. The 32x32
// -> 64-bit products are written as one 64-bit multiply on both sides (nvcc emits mul.wide).
SDAR_HOST_DEVICE inline Philox4x32 philox4x32_10(Philox4x32 c, std::uint32_t key0, std::uint32_t key1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key0 += 0x9E3779B9u;  // golden ratio
      key1 += 0xBB67AE85u;  // sqrt(3) - 1
    }
    const std::uint64_t p0 = static_cast<std::uint64_t>(0xD2511F53u) * c.word[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(0xCD9E8D57u) * c.word[2];
    const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    c = Philox4x32{{hi1 ^ c.word[1] ^ key0, lo1, hi0 ^ c.word[3] ^ key1, lo0}};
  }
  return c;
}

// The uniform of (row, step, position) under `seed` (CONTRACTS.md "Runtime notes"):
//   key = {seed & 0xffffffff, seed >> 32}, counter = {row, step, position, 0},
//   u = (out[0] >> 8) * 2^-24, exactly representable in float32, in [0, 1).
SDAR_HOST_DEVICE inline double philox_uniform(std::uint64_t seed, std::uint32_t row, std::uint32_t step,
                                              std::uint32_t position) {
  const Philox4x32 out = philox4x32_10(Philox4x32{{row, step, position, 0u}}, static_cast<std::uint32_t>(seed),
                                       static_cast<std::uint32_t>(seed >> 32));
  return static_cast<double>(out.word[0] >> 8) * (1.0 / 16777216.0);
}

// ---- Which positions a step samples and fills ------------------------------------------------

// Masked positions of a block: mask[j] != 0 for j in [0, block_length).
SDAR_HOST_DEVICE inline int masked_count(const std::uint8_t* mask, int block_length) {
  int count = 0;
  for (int j = 0; j < block_length; ++j) count += mask[j] != 0 ? 1 : 0;
  return count;
}

// n_k = min(s[k], masked): what a step fills at least (rule 3).
SDAR_HOST_DEVICE inline int step_count(int scheduled, int masked) { return scheduled < masked ? scheduled : masked; }

// Whether position j is sampled this step: every masked position, except under `sequential`,
// which fills (and so samples) only the first n_k masked positions, left to right.
SDAR_HOST_DEVICE inline bool samples_position(const std::uint8_t* mask, int block_length, int j, int policy,
                                              int scheduled) {
  if (mask[j] == 0) return false;
  if (policy != kSequential) return true;
  int before = 0;
  for (int i = 0; i < j; ++i) before += mask[i] != 0 ? 1 : 0;
  return before < step_count(scheduled, masked_count(mask, block_length));
}

// Whether the confidences (entropies, under entropy_bounded) decide anything this step: not under
// `sequential`, not when a low-confidence step fills every masked position (n_k = masked), and not
// when an entropy-bounded step has one masked position left (it fills at least one). A greedy
// step that they do not decide needs only each position's argmax, not its softmax.
SDAR_HOST_DEVICE inline bool confidence_decides(const std::uint8_t* mask, int block_length, int policy,
                                                int scheduled) {
  if (policy == kSequential) return false;
  const int masked = masked_count(mask, block_length);
  if (policy == kEntropyBounded) return masked > 1;
  return step_count(scheduled, masked) < masked;
}

// Entropy (nats) of softmax(x) over a vocabulary from two float64 sums taken with top = max x:
//   sum = sum_i exp(x_i - top), moment = sum_i exp(x_i - top) * (x_i - top) (terms with exp = 0
//   left out), H = log(sum) - moment / sum.
// Never negative as computed: the top term is exactly 1, so sum >= 1 and log(sum) >= 0, and every
// moment term is <= 0. An all -inf row gives NaN sums and so a NaN entropy, which ranks last.
SDAR_HOST_DEVICE inline double entropy_from_sums(double sum, double moment) { return log(sum) - moment / sum; }

// The order of the low-confidence policies: higher confidence first, ties to the lower position.
// A NaN confidence (an all -inf logits row) ranks below every number, so the order stays total
// and a step never fills more than it chose.
SDAR_HOST_DEVICE inline bool ranks_before(double ci, int i, double cj, int j) {
  const bool nan_i = ci != ci, nan_j = cj != cj;
  if (nan_i != nan_j) return nan_j;
  if (!nan_i && ci != cj) return ci > cj;
  return i < j;
}

// The order of entropy_bounded: lower entropy first, ties to the lower position, NaN last.
SDAR_HOST_DEVICE inline bool entropy_ranks_before(double hi, int i, double hj, int j) {
  const bool nan_i = hi != hi, nan_j = hj != hj;
  if (nan_i != nan_j) return nan_j;
  if (!nan_i && hi != hj) return hi < hj;
  return i < j;
}

// entropy_bounded (rule 5): walk the masked positions in entropy_ranks_before order, adding each
// one's entropy to a float64 running sum in that order; fill every position whose running sum
// (its own entropy included) is strictly below `budget`, and always the first one. Entropies are
// >= 0, so the running sum never decreases and the filled positions are a prefix of the order.
// The schedule (n_k) plays no part. `entropy(j)` is read only for masked positions. O(L^2)
// selection without scratch, like choose_positions.
template <typename Entropy>
SDAR_HOST_DEVICE int choose_entropy_bounded(const std::uint8_t* mask, int block_length, double budget,
                                            Entropy entropy, std::uint8_t* chosen) {
  for (int j = 0; j < block_length; ++j) chosen[j] = 0;
  int filled = 0;
  double running = 0.0;
  int last = -1;  // the position filled last, and its entropy
  double last_h = 0.0;
  for (;;) {
    int next = -1;
    double next_h = 0.0;
    for (int j = 0; j < block_length; ++j) {
      if (mask[j] == 0) continue;
      const double h = entropy(j);
      if (last >= 0 && !entropy_ranks_before(last_h, last, h, j)) continue;  // filled already
      if (next < 0 || entropy_ranks_before(h, j, next_h, next)) {
        next = j;
        next_h = h;
      }
    }
    if (next < 0) break;
    running += next_h;
    if (filled > 0 && !(running < budget)) break;
    chosen[next] = 1;
    ++filled;
    last = next;
    last_h = next_h;
  }
  return filled;
}

// Which masked positions one step fills (rule 5), from the confidences of the sampled ones:
//   sequential: the first n_k masked positions;
//   low_confidence_static: the n_k with the highest confidence (ties: lower position first);
//   low_confidence_dynamic: every one with confidence > threshold, or the static choice when that
//   is fewer than n_k;
//   entropy_bounded: `confidence(j)` is position j's entropy and `threshold` the entropy budget
//   (choose_entropy_bounded).
// `confidence(j)` returns position j's confidence (called only for sampled positions; the device
// passes a loader that reads past L1). Writes chosen[j] = 1 for the filled positions, 0 elsewhere,
// and returns their number. The mask is only read: the caller applies the choice afterwards.
// O(L^2) rank counting: no sort, no scratch, the same arithmetic on both sides.
template <typename Confidence>
SDAR_HOST_DEVICE int choose_positions(const std::uint8_t* mask, int block_length, int policy, double threshold,
                                      int scheduled, Confidence confidence, std::uint8_t* chosen) {
  if (policy == kEntropyBounded) return choose_entropy_bounded(mask, block_length, threshold, confidence, chosen);
  const int count = masked_count(mask, block_length);
  const int n = step_count(scheduled, count);
  int take = n;
  if (policy == kLowConfidenceDynamic) {
    int above = 0;
    for (int j = 0; j < block_length; ++j) {
      if (mask[j] != 0 && confidence(j) > threshold) ++above;
    }
    if (above >= n) take = above;  // ranked by confidence: the first `above` are exactly those
  }
  int filled = 0;
  int seen = 0;
  for (int j = 0; j < block_length; ++j) {
    chosen[j] = 0;
    if (mask[j] == 0) continue;
    int rank = seen++;  // sequential: rank by position
    if (policy != kSequential) {
      const double cj = confidence(j);
      rank = 0;
      for (int i = 0; i < block_length; ++i) {
        if (mask[i] != 0 && i != j && ranks_before(confidence(i), i, cj, j)) ++rank;
      }
    }
    if (rank < take) {
      chosen[j] = 1;
      ++filled;
    }
  }
  return filled;
}

}  // namespace sdar::rules
