#include "remask.h"

#include "errors.h"
#include "step_rules.h"

namespace sdar {

static_assert(static_cast<int>(RemaskPolicy::Sequential) == rules::kSequential &&
                  static_cast<int>(RemaskPolicy::LowConfidenceStatic) == rules::kLowConfidenceStatic &&
                  static_cast<int>(RemaskPolicy::LowConfidenceDynamic) == rules::kLowConfidenceDynamic &&
                  static_cast<int>(RemaskPolicy::EntropyBounded) == rules::kEntropyBounded,
              "step_rules.h's policy numbers mirror generation_config.h's RemaskPolicy");

std::vector<int> denoising_schedule(int block_length, int steps) {
  if (steps < 1 || steps > block_length) {
    throw InvalidArgument("denoising_steps must be in [1, " + std::to_string(block_length) + "], got " +
                          std::to_string(steps));
  }
  std::vector<int> schedule(static_cast<std::size_t>(steps), block_length / steps);
  for (int k = 0; k < block_length % steps; ++k) schedule[static_cast<std::size_t>(k)] += 1;
  return schedule;
}

bool samples_position(RemaskPolicy policy, const std::uint8_t* mask, int block_length, int j, int scheduled) {
  return rules::samples_position(mask, block_length, j, static_cast<int>(policy), scheduled);
}

bool confidence_decides(RemaskPolicy policy, const std::uint8_t* mask, int block_length, int scheduled) {
  return rules::confidence_decides(mask, block_length, static_cast<int>(policy), scheduled);
}

int select_positions(RemaskPolicy policy, double threshold, const std::uint8_t* mask, int block_length,
                     const double* confidence, int scheduled, std::uint8_t* chosen) {
  return rules::choose_positions(mask, block_length, static_cast<int>(policy), threshold, scheduled,
                                 [confidence](int j) { return confidence[j]; }, chosen);
}

}  // namespace sdar
