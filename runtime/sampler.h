// Per-position sampling from one float32 logits row (CONTRACTS.md rule 4).
//
// Exact arithmetic (the test reference and any GPU kernel follow it):
//   greedy (temperature == 0): token = argmax (lowest index on ties);
//     confidence = 1 / sum_i exp(l_i - l_max), summed in float64 in index order (the terms from
//     exp_terms.h, within ~1 ulp of libm's exp).
//   otherwise: z_i = double(l_i) / T; the candidate set is the top-k (ordered by z desc, index asc)
//     when 0 < k < V, else the whole vocabulary; w_i = exp(z_i - z_max) in float64;
//     Z = sum of w over the candidates (in sorted order for top-k, index order otherwise).
//     Candidates are visited in the order (w desc, index asc). top-p (p < 1): keep the shortest
//     prefix whose running sum c (float64, sequential) satisfies c >= p * Z; S = that c; else S = Z.
//     Draw: the first kept token whose running sum exceeds u * S (the last kept one if rounding
//     leaves none); confidence = w_token / S.
//   entropy (asked for by entropy_bounded): of the whole distribution softmax(x) before top-k /
//     top-p, x = l (greedy) or z (otherwise): with d_i = x_i - x_max and w_i = exp(d_i) as above,
//     sum = sum_i w_i and moment = sum_i w_i * d_i (w_i = 0 terms left out), both float64 in index
//     order; H = log(sum) - moment / sum (step_rules.h: entropy_from_sums).
// Scratch is allocated once (vocab-sized); sorting is partial and grows only as needed.
#pragma once

#include <cstdint>
#include <vector>

namespace sdar {

struct SampleParams {
  double temperature = 0.0;
  int top_k = 0;
  double top_p = 1.0;
  bool entropy = false;  // also compute Sample::entropy
};

struct Sample {
  std::int64_t token = 0;
  double confidence = 0.0;
  double entropy = 0.0;  // nats, when SampleParams::entropy
};

class Sampler {
 public:
  explicit Sampler(int vocab_size);
  // `u` is the uniform for this (row, step, position); unused when greedy.
  Sample sample(const float* logits, const SampleParams& params, double u);
  // The greedy token alone (argmax, lowest index on ties): for a step whose choice the confidences
  // do not decide, which then skips the softmax over the vocabulary.
  std::int64_t argmax(const float* logits) const;

 private:
  Sample greedy(const float* logits, bool entropy);
  // The entropy from w_ = exp(x - x_max) over the vocabulary, x_i = double(logits[i]) / divisor
  // (1 when greedy, T otherwise: the same x the weights were computed from).
  double entropy(const float* logits, double divisor, double x_max) const;
  // Sorts the first `count` entries of order_[0, size) by (w desc, index asc).
  void sort_prefix(int size, int count);
  int vocab_;
  std::vector<double> w_;
  std::vector<std::int32_t> order_;
};

}  // namespace sdar
