#include "decode_backend.h"

#include <algorithm>

namespace sdar {

void write_call_rows(const CallSetup& setup, int batch, std::int64_t mask_id, std::size_t stride,
                     std::int64_t* tokens, std::uint8_t* masked) {
  const auto& prompts = *setup.prompts;
  const auto n = static_cast<std::size_t>(setup.prompt_length);
  const auto total = static_cast<std::size_t>(setup.total);
  for (int r = 0; r < batch; ++r) {
    // The graphs have a static batch: rows beyond the prompts repeat prompt 0 and are discarded.
    const auto& prompt = prompts[static_cast<std::size_t>(r) < prompts.size() ? static_cast<std::size_t>(r) : 0];
    std::int64_t* row = tokens + static_cast<std::size_t>(r) * stride;
    std::uint8_t* row_mask = masked + static_cast<std::size_t>(r) * stride;
    std::copy(prompt.begin(), prompt.end(), row);
    std::fill(row + n, row + total, mask_id);
    std::fill(row_mask, row_mask + n, std::uint8_t{0});
    std::fill(row_mask + n, row_mask + total, std::uint8_t{1});
  }
}

}  // namespace sdar
