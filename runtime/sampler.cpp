#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "errors.h"
#include "exp_terms.h"
#include "step_rules.h"

namespace sdar {

Sampler::Sampler(int vocab_size)
    : vocab_(vocab_size), w_(static_cast<std::size_t>(vocab_size)), order_(static_cast<std::size_t>(vocab_size)) {
  if (vocab_size <= 0) throw InvalidArgument("Sampler needs a positive vocab size");
}

std::int64_t Sampler::argmax(const float* logits) const {
  int best = 0;
  for (int i = 1; i < vocab_; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

Sample Sampler::greedy(const float* logits, bool entropy) {
  const auto best = static_cast<int>(argmax(logits));
  // The terms first (vectorized where the CPU allows), then their sum in index order.
  const double top = static_cast<double>(logits[best]);
  exp_terms(logits, vocab_, top, w_.data());
  double sum = 0.0;
  for (int i = 0; i < vocab_; ++i) sum += w_[static_cast<std::size_t>(i)];
  return {best, 1.0 / sum, entropy ? this->entropy(logits, 1.0, top) : 0.0};
}

double Sampler::entropy(const float* logits, double divisor, double x_max) const {
  double sum = 0.0;
  double moment = 0.0;
  for (int i = 0; i < vocab_; ++i) {
    const double w = w_[static_cast<std::size_t>(i)];
    sum += w;
    // exp underflowed (or the logit is -inf, where d is -inf): the term is 0, not 0 * d
    if (w != 0.0) moment += w * (static_cast<double>(logits[i]) / divisor - x_max);
  }
  return rules::entropy_from_sums(sum, moment);
}

void Sampler::sort_prefix(int size, int count) {
  const auto by_weight = [this](std::int32_t a, std::int32_t b) {
    const double wa = w_[static_cast<std::size_t>(a)];
    const double wb = w_[static_cast<std::size_t>(b)];
    return wa > wb || (wa == wb && a < b);
  };
  std::partial_sort(order_.begin(), order_.begin() + count, order_.begin() + size, by_weight);
}

Sample Sampler::sample(const float* logits, const SampleParams& params, double u) {
  if (params.temperature == 0.0) return greedy(logits, params.entropy);

  const double t = params.temperature;
  double z_max = -INFINITY;
  for (int i = 0; i < vocab_; ++i) z_max = std::max(z_max, static_cast<double>(logits[i]) / t);
  // Unnormalised weights; ordering by w equals ordering by z (exp is monotone) except where
  // exp rounds two z to the same w, in which case the index breaks the tie, as specified.
  for (int i = 0; i < vocab_; ++i) {
    w_[static_cast<std::size_t>(i)] = std::exp(static_cast<double>(logits[i]) / t - z_max);
  }
  // Of the whole distribution, before top-k / top-p cut it.
  const double entropy = params.entropy ? this->entropy(logits, t, z_max) : 0.0;
  std::iota(order_.begin(), order_.end(), 0);

  int size = vocab_;      // candidates occupy order_[0, size)
  int sorted = 0;         // order_[0, sorted) is in final order
  double total = 0.0;     // Z
  if (params.top_k > 0 && params.top_k < vocab_) {
    size = params.top_k;
    sort_prefix(vocab_, size);
    sorted = size;
    for (int j = 0; j < size; ++j) total += w_[static_cast<std::size_t>(order_[static_cast<std::size_t>(j)])];
  } else {
    for (int i = 0; i < vocab_; ++i) total += w_[static_cast<std::size_t>(i)];
  }

  // Walk the candidates in sorted order, sorting more of them only when the walk needs it.
  const auto weight_at = [&](int j) -> double {
    if (j >= sorted) {
      const int want = std::min(size, std::max(64, std::max(sorted * 4, j + 1)));
      sort_prefix(size, want);
      sorted = want;
    }
    return w_[static_cast<std::size_t>(order_[static_cast<std::size_t>(j)])];
  };

  int kept = size;
  double kept_sum = total;
  if (params.top_p < 1.0) {
    const double target = params.top_p * total;
    double running = 0.0;
    for (int j = 0; j < size; ++j) {
      running += weight_at(j);
      if (running >= target) {
        kept = j + 1;
        break;
      }
    }
    kept_sum = running;
  }

  const double threshold = u * kept_sum;
  double running = 0.0;
  int chosen = kept - 1;
  for (int j = 0; j < kept; ++j) {
    running += weight_at(j);
    if (running > threshold) {
      chosen = j;
      break;
    }
  }
  const std::int32_t token = order_[static_cast<std::size_t>(chosen)];
  if (chosen >= sorted) weight_at(chosen);
  return {token, w_[static_cast<std::size_t>(token)] / kept_sum, entropy};
}

}  // namespace sdar
