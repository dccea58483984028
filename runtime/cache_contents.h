// What the KV cache's committed prefix holds, per batch row: the token ids whose K/V fill that
// row's positions [0, length). The Generator keeps it so a call can start from a prefix the
// cache already holds (a conversation's earlier turns, a shared system prompt) and prefill only
// the rest.
//
// Trust is earned token by token and lost by default: a call forgets everything before its first
// engine pass (take) and writes the new contents only when it returns (set), so a call that
// fails half-way leaves nothing trusted. Under the block-causal mask the K/V of positions
// [0, P), P a multiple of the block length, depend only on the tokens at [0, P): a prompt that
// starts with the same P tokens may reuse them as they are.
#pragma once

#include <cstdint>
#include <vector>

namespace sdar {

class CacheContents {
 public:
  using Rows = std::vector<std::vector<std::int64_t>>;

  explicit CacheContents(int batch) : rows_(static_cast<std::size_t>(batch)) {}

  // The token ids held by `row` (empty: nothing known).
  const std::vector<std::int64_t>& row(int row) const { return rows_.at(static_cast<std::size_t>(row)); }

  // Forgets everything and returns what was known (the "before" of set()).
  Rows take();

  // The longest prefix length, a multiple of block_length and at most `limit`, that every
  // prompt r shares with row r of `before`.
  static int reusable(const Rows& before, const Rows& prompts, int block_length, int limit);

  // Records a call that reused `reused` positions and committed [0, committed): `sequences[b]`
  // holds at least `committed` tokens of row b as the call ran it (rows beyond `prompts` repeat
  // prompt 0). Rows of the call hold their sequence. A row beyond them kept its own first
  // `reused` positions and computed the rest on top of them, so it holds before[b][0, reused)
  // followed by its sequence, or nothing when `before` did not know that much of it.
  void set(const Rows& before, const Rows& sequences, int prompts, int reused, int committed);

 private:
  Rows rows_;
};

// The token sequence of every batch row of one call as far as it has run, for CacheContents::set:
// the prompt's whole blocks (rows beyond the call's prompts repeat prompt 0), then every finished
// block as the backend read it back for the stop check.
class CallRecord {
 public:
  CallRecord(const CacheContents::Rows& prompts, int batch, int prefix, int total);
  void add_block(const std::vector<std::int64_t>& block);  // [B, L]
  const CacheContents::Rows& sequences() const { return sequences_; }

 private:
  CacheContents::Rows sequences_;
};

}  // namespace sdar
