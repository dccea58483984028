// Per-call decoding parameters (CONTRACTS.md "Decoding rules"). Their ranges are checked in one
// place, when a call starts (Generator::generate); the bindings only convert Python values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sdar {

enum class RemaskPolicy { Sequential, LowConfidenceStatic, LowConfidenceDynamic, EntropyBounded };

RemaskPolicy parse_remask_policy(const std::string& name);  // throws InvalidArgument
std::string remask_policy_name(RemaskPolicy policy);

struct GenerationConfig {
  int max_new_tokens = 128;
  std::optional<int> denoising_steps;  // unset -> block_length
  RemaskPolicy remasking = RemaskPolicy::LowConfidenceDynamic;
  double threshold = 0.9;   // low_confidence_dynamic only, in (0, 1]
  double eb_threshold = 0.35;  // entropy_bounded only: entropy budget per step in nats, finite, >= 0
  double temperature = 0.0; // 0 -> greedy
  int top_k = 0;            // 0 -> off
  double top_p = 1.0;       // 1 -> off
  std::uint64_t seed = 0;
  std::vector<std::int64_t> stop_ids;     // added to the model's eos ids
  bool fused_commit = true;
  std::vector<std::uint32_t> row_ids;     // Philox row word per prompt; empty -> 0..n-1
};

// The number a step's position rule compares with: eb_threshold under entropy_bounded, else threshold.
inline double step_threshold(const GenerationConfig& config) {
  return config.remasking == RemaskPolicy::EntropyBounded ? config.eb_threshold : config.threshold;
}

}  // namespace sdar
