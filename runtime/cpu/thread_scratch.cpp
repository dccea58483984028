#include "thread_scratch.h"

#include <algorithm>

namespace sdar::cpu {

void ThreadScratch::reserve(std::size_t bytes, int threads) {
  const std::size_t slot_bytes = (bytes + 63) / 64 * 64;
  if (slot_bytes <= slot_bytes_ && threads <= threads_) return;
  slot_bytes_ = std::max(slot_bytes, slot_bytes_);
  threads_ = std::max(threads, threads_);
  bytes_.assign(slot_bytes_ * threads_ + 64, 0);  // + 64: the slots start at the first 64-byte boundary
}

std::uint8_t* ThreadScratch::slot(const ThreadPool& pool) {
  const auto base = reinterpret_cast<std::uintptr_t>(bytes_.data());
  return reinterpret_cast<std::uint8_t*>((base + 63) / 64 * 64) + slot_bytes_ * pool.slot();
}

}  // namespace sdar::cpu
