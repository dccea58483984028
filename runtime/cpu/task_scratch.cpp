#include "task_scratch.h"

#include <algorithm>
#include <limits>

#include "thread_pool.h"

namespace sdar::cpu {

void TaskScratch::reserve(std::size_t bytes, int threads) {
  const int tasks = ThreadPool::range_tasks(std::numeric_limits<int>::max(), threads);
  const std::size_t slot_bytes = (bytes + 63) / 64 * 64;
  if (slot_bytes <= slot_bytes_ && tasks <= tasks_) return;
  slot_bytes_ = std::max(slot_bytes, slot_bytes_);
  tasks_ = std::max(tasks, tasks_);
  bytes_.assign(slot_bytes_ * tasks_ + 64, 0);  // + 64: the slots start at the first 64-byte boundary
}

std::uint8_t* TaskScratch::slot(int task) {
  const auto base = reinterpret_cast<std::uintptr_t>(bytes_.data());
  return reinterpret_cast<std::uint8_t*>((base + 63) / 64 * 64) + slot_bytes_ * task;
}

}  // namespace sdar::cpu
