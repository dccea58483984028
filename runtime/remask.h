// The denoising schedule (CONTRACTS.md rule 3) and the remasking policies (rule 5), for host code.
// The position choice itself is step_rules.h's, the code the GPU kernels run too.
#pragma once

#include <cstdint>
#include <vector>

#include "generation_config.h"

namespace sdar {

// s[k] = L / steps + (k < L % steps ? 1 : 0), k = 0..steps-1.
std::vector<int> denoising_schedule(int block_length, int steps);

// Whether block offset j is sampled at a step (sequential: only the first n_k masked positions).
bool samples_position(RemaskPolicy policy, const std::uint8_t* mask, int block_length, int j, int scheduled);

// Whether this step's choice depends on the confidences (step_rules.h: confidence_decides).
bool confidence_decides(RemaskPolicy policy, const std::uint8_t* mask, int block_length, int scheduled);

// Which masked positions one step fills, given the block's mask (1 = masked) and the confidence
// of every sampled position (indexed by block offset; other entries are not read). Under
// entropy_bounded, `confidence` holds each position's entropy and `threshold` is eb_threshold
// (step_threshold in generation_config.h). Writes
// chosen[j] = 1 for the filled positions (0 elsewhere) and returns how many there are.
int select_positions(RemaskPolicy policy, double threshold, const std::uint8_t* mask, int block_length,
                     const double* confidence, int scheduled, std::uint8_t* chosen);

}  // namespace sdar
