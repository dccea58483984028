// What a caller can hook into a generate() call: a callback per finished block (the output it
// added), a callback per denoising step (the live state of the block being denoised), whether the
// call may start from the KV cache's committed prefix (cache_contents.h), and its cancellation.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "cancellation.h"

namespace sdar {

// Called after every finished block with, per prompt, the output tokens that block added
// (generated positions of the block, cut at max_new_tokens and before the first stop token;
// empty for a row that had already finished). Return false to cancel: generation ends cleanly
// with finish reason "cancelled" for the rows still running.
using BlockCallback = std::function<bool(int block_index, const std::vector<std::vector<std::int64_t>>& tokens)>;

// The block being denoised, right after one denoising step. `tokens` and `masked` are [B, L]
// (row stride L, all B rows of the graphs; only the first `rows` are the call's prompts):
// mask ids and 1 where a position is still masked. Positions before the prompt's end are prompt
// tokens. A finished row's block is left as it was (rule 8).
struct StepView {
  int block_index = 0;  // decoded block of the call, 0 = the first (as BlockCallback counts)
  int step = 0;         // denoising step within the block, 0-based
  int block_start = 0;  // absolute position of the block's first token
  int rows = 0;
  int block_length = 0;
  const std::vector<std::int64_t>* tokens = nullptr;
  const std::vector<std::uint8_t>* masked = nullptr;
};

// Called after every denoising step when set. The device backend copies the block's tokens and
// masks back to the host for it (one extra sync per step), so leave it unset unless it is shown.
// Return false to cancel at once: the unfinished block's tokens are not reported.
using StepCallback = std::function<bool(const StepView& view)>;

struct CallOptions {
  BlockCallback on_block;
  StepCallback on_step;
  // Start from the longest whole-block prefix of the prompts that the cache already holds
  // (verified token by token), instead of prefilling from position 0.
  bool reuse_cache = false;
  // Consulted before every engine pass (cancellation.h).
  Cancellation cancel;
};

}  // namespace sdar
