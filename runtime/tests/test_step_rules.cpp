// step_rules.h on the host: the same source the CUDA kernels compile (ctest -R sdar_step_rules).
// Philox against the published known-answer vectors of Philox-4x32-10; the position choice on
// hand-made blocks whose answer follows from CONTRACTS.md rule 5 directly (entropy_bounded's with
// budgets and running sums that are exact in binary, so the strict comparison is what is tested).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "check.h"
#include "step_rules.h"

namespace {

using sdar::rules::kEntropyBounded;
using sdar::rules::kLowConfidenceDynamic;
using sdar::rules::kLowConfidenceStatic;
using sdar::rules::kSequential;

// Chosen block offsets, ascending.
std::vector<int> choose(const std::vector<std::uint8_t>& mask, const std::vector<double>& conf, int policy,
                        double threshold, int scheduled) {
  std::vector<std::uint8_t> chosen(mask.size(), 9);
  const int L = static_cast<int>(mask.size());
  const int n = sdar::rules::choose_positions(mask.data(), L, policy, threshold, scheduled,
                                              [&conf](int j) { return conf[static_cast<std::size_t>(j)]; },
                                              chosen.data());
  std::vector<int> out;
  for (int j = 0; j < L; ++j) {
    CHECK(chosen[static_cast<std::size_t>(j)] <= 1);  // every flag written
    if (chosen[static_cast<std::size_t>(j)]) out.push_back(j);
  }
  CHECK(static_cast<int>(out.size()) == n);
  return out;
}

bool same(const sdar::rules::Philox4x32& a, std::uint32_t w0, std::uint32_t w1, std::uint32_t w2, std::uint32_t w3) {
  return a.word[0] == w0 && a.word[1] == w1 && a.word[2] == w2 && a.word[3] == w3;
}

}  // namespace

int main() {
  using sdar::rules::Philox4x32;
  using sdar::rules::philox4x32_10;
  CHECK(same(philox4x32_10(Philox4x32{{0, 0, 0, 0}}, 0, 0), 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u));
  CHECK(same(philox4x32_10(Philox4x32{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu),
             0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu));
  CHECK(same(philox4x32_10(Philox4x32{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u),
             0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u));
  // u = (word0 >> 8) * 2^-24 under key {seed lo, seed hi}, counter {row, step, position, 0}
  const double u = sdar::rules::philox_uniform(0, 0, 0, 0);
  CHECK(u == static_cast<double>(0x6627e8d5u >> 8) / 16777216.0);
  CHECK(u >= 0.0 && u < 1.0);

  const std::vector<double> conf = {0.1, 0.9, 0.9, 0.5};
  const std::vector<std::uint8_t> all = {1, 1, 1, 1};
  // static: the n_k most confident, ties to the lower position
  CHECK((choose(all, conf, kLowConfidenceStatic, 0.9, 1) == std::vector<int>{1}));
  CHECK((choose(all, conf, kLowConfidenceStatic, 0.9, 3) == std::vector<int>{1, 2, 3}));
  // dynamic: everything strictly above the threshold when that is at least n_k ...
  CHECK((choose(all, conf, kLowConfidenceDynamic, 0.6, 1) == std::vector<int>{1, 2}));
  CHECK((choose(all, conf, kLowConfidenceDynamic, 0.9, 1) == std::vector<int>{1}));  // 0.9 is not above 0.9
  // ... else the static choice
  CHECK((choose(all, conf, kLowConfidenceDynamic, 0.6, 3) == std::vector<int>{1, 2, 3}));
  // only masked positions are ever filled; n_k = min(s_k, masked)
  const std::vector<std::uint8_t> some = {1, 0, 1, 0};
  CHECK((choose(some, conf, kLowConfidenceStatic, 0.9, 4) == std::vector<int>{0, 2}));
  CHECK((choose(some, conf, kLowConfidenceStatic, 0.9, 1) == std::vector<int>{2}));
  // sequential: the first n_k masked positions, whatever the confidences
  const std::vector<std::uint8_t> tail = {0, 1, 1, 1};
  CHECK((choose(tail, {9, 0.0, 0.0, 1.0}, kSequential, 0.9, 2) == std::vector<int>{1, 2}));
  CHECK(!sdar::rules::samples_position(tail.data(), 4, 0, kSequential, 2));
  CHECK(sdar::rules::samples_position(tail.data(), 4, 2, kSequential, 2));
  CHECK(!sdar::rules::samples_position(tail.data(), 4, 3, kSequential, 2));
  CHECK(sdar::rules::samples_position(tail.data(), 4, 3, kLowConfidenceStatic, 1));
  CHECK(!sdar::rules::samples_position(tail.data(), 4, 0, kLowConfidenceStatic, 1));
  // a NaN confidence ranks last, and the step still fills exactly n_k
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK((choose(all, {nan, 0.2, nan, 0.1}, kLowConfidenceStatic, 0.9, 2) == std::vector<int>{1, 3}));
  CHECK((choose(all, {nan, 0.2, nan, 0.1}, kLowConfidenceStatic, 0.9, 3) == std::vector<int>{0, 1, 3}));
  CHECK((choose(all, {nan, nan, nan, nan}, kLowConfidenceDynamic, 0.5, 1) == std::vector<int>{0}));

  // entropy_bounded: ascending entropy (ties: lower position first), the longest prefix whose running
  // sum stays strictly below the budget, at least one position; the schedule plays no part.
  const std::vector<double> ent = {0.375, 0.125, 0.125, 0.5};
  CHECK((choose(all, ent, kEntropyBounded, 0.375, 1) == std::vector<int>{1, 2}));  // 0.125, 0.25; 0.625 is over
  CHECK((choose(all, ent, kEntropyBounded, 0.625, 1) == std::vector<int>{1, 2}));  // 0.625 is not below 0.625
  CHECK((choose(all, ent, kEntropyBounded, 0.6251, 1) == std::vector<int>{0, 1, 2}));
  CHECK((choose(all, ent, kEntropyBounded, 0.25, 4) == std::vector<int>{1}));  // tie: the lower position first
  CHECK((choose(all, ent, kEntropyBounded, 0.0, 4) == std::vector<int>{1}));   // budget 0: one per step
  CHECK((choose(all, ent, kEntropyBounded, 1e9, 1) == std::vector<int>{0, 1, 2, 3}));
  CHECK((choose(all, {2.0, 3.0, 1.5, 4.0}, kEntropyBounded, 0.35, 4) == std::vector<int>{2}));  // first one alone
  CHECK((choose(all, {0.25, 0.25, 0.25, 0.25}, kEntropyBounded, 0.6, 1) == std::vector<int>{0, 1}));
  CHECK((choose(all, {0.0, 0.0, 0.0, 0.0}, kEntropyBounded, 0.0, 1) == std::vector<int>{0}));  // 0 is not below 0
  CHECK((choose(all, {0.0, 0.0, 0.0, 0.0}, kEntropyBounded, 1e-300, 1) == std::vector<int>{0, 1, 2, 3}));
  // only masked positions count, and a filled position's entropy is never read
  CHECK((choose(some, {0.375, nan, 0.125, nan}, kEntropyBounded, 0.625, 1) == std::vector<int>{0, 2}));
  CHECK((choose(some, {0.375, nan, 0.125, nan}, kEntropyBounded, 0.5, 1) == std::vector<int>{2}));
  CHECK((choose(tail, {-1.0, 0.5, 0.25, 0.125}, kEntropyBounded, 0.4, 1) == std::vector<int>{2, 3}));
  // NaN ranks last and stops the running sum; a row of NaNs still fills one position
  CHECK((choose(all, {nan, 0.25, nan, 0.125}, kEntropyBounded, 1e9, 1) == std::vector<int>{1, 3}));
  CHECK((choose(all, {nan, nan, nan, nan}, kEntropyBounded, 1e9, 1) == std::vector<int>{0}));
  // entropy from the two sums: a one-hot row is exactly 0, a uniform one log V
  CHECK(sdar::rules::entropy_from_sums(1.0, 0.0) == 0.0);
  CHECK(std::fabs(sdar::rules::entropy_from_sums(4.0, 0.0) - std::log(4.0)) < 1e-15);
  {  // logits {0, -1, -2}: against -sum p log p written out
    const double w1 = std::exp(-1.0), w2 = std::exp(-2.0), sum = 1.0 + w1 + w2;
    const double direct = -(1.0 / sum) * std::log(1.0 / sum) - (w1 / sum) * std::log(w1 / sum) -
                          (w2 / sum) * std::log(w2 / sum);
    CHECK(std::fabs(sdar::rules::entropy_from_sums(sum, -w1 - 2.0 * w2) - direct) < 1e-15);
  }
  CHECK(sdar::rules::confidence_decides(all.data(), 4, kEntropyBounded, 4));  // n_k = masked: still decides
  const std::vector<std::uint8_t> last = {0, 0, 0, 1};
  CHECK(!sdar::rules::confidence_decides(last.data(), 4, kEntropyBounded, 1));  // one masked: it is filled

  // confidence_decides: when it says no, every set of confidences gives the same choice (so the host
  // step and the device's greedy kernel skip computing them); checked over every mask of L = 4, every n_k, every policy, against
  // random, NaN and reversed confidences. When it says yes, some confidences change the choice.
  std::uint32_t state = 12345u;
  const auto uniform = [&state]() {
    state = state * 1664525u + 1013904223u;
    return static_cast<double>(state >> 8) / 16777216.0;
  };
  for (int bits = 1; bits < 16; ++bits) {
    std::vector<std::uint8_t> mask(4);
    for (int j = 0; j < 4; ++j) mask[static_cast<std::size_t>(j)] = (bits >> j) & 1;
    for (int policy : {kSequential, kLowConfidenceStatic, kLowConfidenceDynamic, kEntropyBounded}) {
      for (int scheduled = 1; scheduled <= 4; ++scheduled) {
        const bool decides = sdar::rules::confidence_decides(mask.data(), 4, policy, scheduled);
        const std::vector<double> up = {0.1, 0.2, 0.3, 0.4}, down = {0.4, 0.3, 0.2, 0.1};
        const std::vector<int> first = choose(mask, up, policy, 0.25, scheduled);
        bool differs = choose(mask, down, policy, 0.25, scheduled) != first;
        for (int trial = 0; trial < 20; ++trial) {
          std::vector<double> conf(4);
          for (auto& c : conf) c = trial % 5 == 0 ? nan : uniform();
          differs = differs || choose(mask, conf, policy, 0.25, scheduled) != first;
        }
        CHECK(decides == differs);
        // A greedy step they do not decide computes no confidence: the host and the device greedy
        // kernel (greedy_step.cu) both leave NaN in every position, and the choice is the same.
        if (!decides) CHECK(choose(mask, {nan, nan, nan, nan}, policy, 0.25, scheduled) == first);
      }
    }
  }

  if (sdar::testing::failure_count() == 0) std::puts("step_rules tests passed");
  return sdar::testing::failure_count() == 0 ? 0 : 1;
}
