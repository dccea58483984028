// A small persistent thread pool for the CPU engine's parallel loops.
//
// The caller is one of the workers: run() hands out task indices from a shared counter, runs
// tasks itself too, and returns when all are done. Nothing is allocated per call. A worker joins
// a job only while it is open: the caller closes it once every task is claimed and waits just for
// the workers inside, so a worker the OS has not scheduled yet (a busy shared host) never delays
// a step; the caller then simply runs more of the tasks. Idle workers spin briefly (a step's
// matmuls follow each other within microseconds) and then sleep on a condition variable, so a
// pool between generation calls costs no CPU. The workers (named "sdar-cpu") start with the
// process's asynchronous signals blocked, so a Ctrl-C reaches the application's own threads
// (thread_pool.cpp).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace sdar::cpu {

class ThreadPool {
 public:
  using TaskFn = void (*)(void* context, int task);

  // threads: workers including the caller (>= 1).
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // The calling thread's slot in this pool, for per-thread scratch in tasks: 1 .. size() - 1 on the
  // pool's workers, 0 on any other thread (the one that calls run(), which runs tasks too). During
  // a run each slot is one thread's.
  int slot() const;

  // Runs fn(context, i) for every i in [0, tasks), in any order and on any worker.
  // Not reentrant: one run at a time (the engine runs one step at a time).
  void run(int tasks, TaskFn fn, void* context);

  // run() over a callable: f(i) for i in [0, tasks).
  template <class F>
  void parallel_for(int tasks, F&& f) {
    using Fn = std::remove_reference_t<F>;  // may be const: only called, never modified through the pointer
    run(tasks, [](void* c, int i) { (*static_cast<Fn*>(c))(i); }, const_cast<void*>(static_cast<const void*>(&f)));
  }

  // How many tasks parallel_ranges splits `count` items into on a pool of `threads`: a few per worker,
  // so that a worker slowed by another process on its core leaves its share to the others.
  static int range_tasks(int count, int threads) {
    const int per_pool = threads == 1 ? 1 : threads * 4;
    return count < per_pool ? count : per_pool;
  }

  // [0, count) in range_tasks(count, size()) contiguous ranges: f(task, begin, end) for each, in any
  // order and on any worker.
  template <class F>
  void parallel_ranges(int count, F&& f) {
    const int tasks = range_tasks(count, size());
    parallel_for(tasks, [&](int task) {
      f(task, static_cast<int>(static_cast<long long>(count) * task / tasks),
        static_cast<int>(static_cast<long long>(count) * (task + 1) / tasks));
    });
  }

 private:
  void worker_loop();
  void work();  // takes tasks until none are left

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<std::uint64_t> generation_{0};  // one per job
  std::atomic<bool> open_{false};             // the current job still takes workers
  std::atomic<int> inside_{0};                // workers that joined the current job and have not left
  std::atomic<int> next_task_{0};
  std::atomic<bool> stop_{false};
  int tasks_ = 0;
  TaskFn fn_ = nullptr;
  void* context_ = nullptr;
};

}  // namespace sdar::cpu
