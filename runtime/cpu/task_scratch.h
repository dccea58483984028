// Scratch memory for the tasks of ThreadPool::parallel_ranges: one slot per task, so no two running
// tasks share one, each starting on a 64-byte boundary (cache lines, aligned vector loads).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sdar::cpu {

class TaskScratch {
 public:
  // Room for `bytes` per task (rounded up to 64) for the most tasks parallel_ranges makes on a pool
  // of `threads`; grows only, and allocates only when it grows.
  void reserve(std::size_t bytes, int threads);

  // Task `task`'s slot (task < the tasks reserved for).
  std::uint8_t* slot(int task);

 private:
  std::size_t slot_bytes_ = 0;
  int tasks_ = 0;
  std::vector<std::uint8_t> bytes_;
};

}  // namespace sdar::cpu
