// exp_terms (the greedy confidence's float64 softmax terms) against libm: ctest -R sdar_exp_terms.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "check.h"
#include "exp_terms.h"

namespace {

// Relative error in units of 2^-52 (an ulp of values in [1, 2)).
double ulps(double got, double want) { return std::fabs(got - want) / (want * 2.220446049250313e-16); }

}  // namespace

int main() {
  // A sweep over every exponent the greedy step meets, past the flush point at -708, plus the
  // exact points 0 (the top token: exactly 1) and -708.
  std::vector<float> x;
  for (double v = -760.0; v <= 0.0; v += 0.00371) x.push_back(static_cast<float>(v));
  x.push_back(0.0f);
  x.push_back(-708.0f);
  double worst = 0.0;
  int wrong_zero = 0;
  // Every length from 0 to 40 covers the 16-, 4- and 1-wide loops and every tail.
  for (int n = 0; n <= 40; ++n) {
    std::vector<double> w(static_cast<std::size_t>(n) + 1, -1.0);
    sdar::exp_terms(x.data() + x.size() - n, n, 0.0, w.data());
    for (int i = 0; i < n; ++i) worst = std::max(worst, ulps(w[i], std::exp(static_cast<double>(x[x.size() - n + i]))));
    CHECK(w[static_cast<std::size_t>(n)] == -1.0);  // nothing written past n
  }
  std::vector<double> w(x.size());
  sdar::exp_terms(x.data(), static_cast<int>(x.size()), 0.0, w.data());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double want = std::exp(static_cast<double>(x[i]));
    if (x[i] < -708.0f) {
      wrong_zero += w[i] != 0.0;
    } else {
      worst = std::max(worst, ulps(w[i], want));
    }
  }
  CHECK(w[x.size() - 2] == 1.0);
  CHECK(wrong_zero == 0);
  // libm's exp is within 1 ulp, ours within 2: 4 leaves room for both and no more.
  CHECK(worst <= 4.0);
  std::printf("exp_terms: worst %.2f ulp over %zu points\n", worst, x.size());

  // A vocabulary-sized greedy sum (shifted by the maximum) agrees with libm's to 1e-15 relative:
  // every term is within 4 ulp and the terms are positive, so the sum is too, plus the rounding
  // of two different sums of 151,936 terms in the same order.
  std::mt19937 rng(7);
  std::normal_distribution<float> logit(0.0f, 4.0f);
  std::vector<float> logits(151936);
  for (auto& v : logits) v = logit(rng);
  float top = logits[0];
  for (const float v : logits) top = v > top ? v : top;
  std::vector<double> terms(logits.size());
  sdar::exp_terms(logits.data(), static_cast<int>(logits.size()), top, terms.data());
  double ours = 0.0;
  double libm = 0.0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    ours += terms[i];
    libm += std::exp(static_cast<double>(logits[i]) - top);
  }
  CHECK(std::fabs(ours - libm) <= 1e-15 * libm);

  if (sdar::testing::failure_count() == 0) std::puts("sdar_exp_terms tests passed");
  return sdar::testing::failure_count() == 0 ? 0 : 1;
}
