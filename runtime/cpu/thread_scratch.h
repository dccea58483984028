// Scratch memory for the tasks a ThreadPool runs: one slot per thread of the pool (ThreadPool::slot),
// so no two running tasks share one and a pool of n threads needs n slots however many tasks a run
// has, each starting on a 64-byte boundary (cache lines, aligned vector loads). A slot holds nothing
// from one task to the next.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "thread_pool.h"

namespace sdar::cpu {

class ThreadScratch {
 public:
  // Room for `bytes` per thread (rounded up to 64) on a pool of `threads`; grows only, and allocates
  // only when it grows.
  void reserve(std::size_t bytes, int threads);

  // The calling thread's slot for a task of `pool` (a pool of at most the threads reserved for).
  std::uint8_t* slot(const ThreadPool& pool);

 private:
  std::size_t slot_bytes_ = 0;
  int threads_ = 0;
  std::vector<std::uint8_t> bytes_;
};

}  // namespace sdar::cpu
