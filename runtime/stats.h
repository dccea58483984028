// Counters and timings of one generate() call.
#pragma once

#include <cstdint>
#include <vector>

namespace sdar {

struct Stats {
  int nfe_prefill = 0;   // prefill-graph passes over the prompt
  int nfe_denoise = 0;   // decode-graph passes (denoising steps that are not fused)
  int nfe_commit = 0;    // prefill-graph passes committing a finished block (unfused)
  int nfe_fused = 0;     // fused passes (commit + first denoising step of the next block)
  std::vector<int> steps_per_block;  // denoising steps of each decoded block (fused step included)
  std::vector<double> block_seconds; // wall time of each decoded block, its commit pass included
  std::int64_t tokens_generated = 0; // output tokens summed over the call's prompts (after cuts)
  int num_rows = 0;                  // prompts in the call
  int cached_tokens = 0;             // prompt positions whose K/V were already in the cache (not prefilled)
  double prefill_seconds = 0.0;
  double total_seconds = 0.0;
  double engine_seconds = 0.0;       // inside Engine::run (includes any language crossing)
  double time_to_first_block = 0.0;  // from the call's start to its first finished block
  int nfe() const { return nfe_prefill + nfe_denoise + nfe_commit + nfe_fused; }
  int decode_forwards() const { return nfe_denoise + nfe_commit + nfe_fused; }
  // Generated tokens per decode forward per row (prefill excluded).
  double tpf() const {
    const int forwards = decode_forwards();
    return forwards == 0 || num_rows == 0
               ? 0.0
               : static_cast<double>(tokens_generated) / static_cast<double>(num_rows) / forwards;
  }
};

}  // namespace sdar
