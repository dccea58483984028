// Philox-4x32-10 and the one uniform the sampler draws per (row, step, position), for host code.
// The arithmetic is step_rules.h's (compiled for the host and the GPU kernels alike); this header
// only gives it std::array arguments.
//
// Uniform derivation (CONTRACTS.md "Runtime notes"):
//   key     = { seed & 0xffffffff, seed >> 32 }
//   counter = { row, step, position, 0 }        (all uint32)
//   out     = philox4x32_10(counter, key)
//   u       = (out[0] >> 8) * 2^-24             -> exactly representable in float32, u in [0, 1)
// `row` is the row id (default: the prompt's index in the call), `step` the number of denoising
// steps that row has already run in this call, `position` the absolute token position.
#pragma once

#include <array>
#include <cstdint>

namespace sdar {

using PhiloxCounter = std::array<std::uint32_t, 4>;
using PhiloxKey = std::array<std::uint32_t, 2>;

PhiloxCounter philox4x32_10(PhiloxCounter counter, PhiloxKey key);

double philox_uniform(std::uint64_t seed, std::uint32_t row, std::uint32_t step, std::uint32_t position);

}  // namespace sdar
