#include "cache_contents.h"

#include <algorithm>
#include <utility>

namespace sdar {

CacheContents::Rows CacheContents::take() {
  Rows before(rows_.size());
  std::swap(before, rows_);
  return before;
}

int CacheContents::reusable(const Rows& before, const Rows& prompts, int block_length, int limit) {
  std::size_t common = static_cast<std::size_t>(std::max(limit, 0));
  for (std::size_t r = 0; r < prompts.size() && common > 0; ++r) {
    if (r >= before.size()) return 0;
    const auto& held = before[r];
    const auto& prompt = prompts[r];
    const std::size_t n = std::min({common, held.size(), prompt.size()});
    common = static_cast<std::size_t>(std::mismatch(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(n),
                                                    held.begin())
                                          .first -
                                      prompt.begin());
  }
  const auto L = static_cast<std::size_t>(block_length);
  return static_cast<int>(common / L * L);
}

void CacheContents::set(const Rows& before, const Rows& sequences, int prompts, int reused, int committed) {
  const auto used = static_cast<std::size_t>(reused);
  const auto length = static_cast<std::size_t>(committed);
  for (std::size_t b = 0; b < rows_.size(); ++b) {
    auto& row = rows_[b];
    row.clear();
    const auto& sequence = sequences.at(b);
    if (sequence.size() < length) continue;  // never: the Generator records every committed position
    if (static_cast<int>(b) < prompts || used == 0) {
      row.assign(sequence.begin(), sequence.begin() + static_cast<std::ptrdiff_t>(length));
    } else if (b < before.size() && before[b].size() >= used) {
      row.assign(before[b].begin(), before[b].begin() + static_cast<std::ptrdiff_t>(used));
      row.insert(row.end(), sequence.begin() + static_cast<std::ptrdiff_t>(used),
                 sequence.begin() + static_cast<std::ptrdiff_t>(length));
    }
  }
}

CallRecord::CallRecord(const CacheContents::Rows& prompts, int batch, int prefix, int total)
    : sequences_(static_cast<std::size_t>(batch)) {
  for (std::size_t b = 0; b < sequences_.size(); ++b) {
    const auto& prompt = prompts[b < prompts.size() ? b : 0];
    auto& sequence = sequences_[b];
    sequence.reserve(static_cast<std::size_t>(total));
    sequence.assign(prompt.begin(), prompt.begin() + prefix);
  }
}

void CallRecord::add_block(const std::vector<std::int64_t>& block) {
  const std::size_t L = block.size() / sequences_.size();
  for (std::size_t b = 0; b < sequences_.size(); ++b) {
    const auto start = block.begin() + static_cast<std::ptrdiff_t>(b * L);
    sequences_[b].insert(sequences_[b].end(), start, start + static_cast<std::ptrdiff_t>(L));
  }
}

}  // namespace sdar
