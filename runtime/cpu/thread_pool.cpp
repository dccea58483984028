#include "thread_pool.h"

#include <chrono>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <signal.h>
#endif

namespace sdar::cpu {
namespace {

#if defined(__unix__) || defined(__APPLE__)
// While one lives, the calling thread holds back the process's asynchronous signals (Ctrl-C's
// SIGINT, SIGTERM, SIGHUP, ...), and the threads it starts inherit that. The workers never take
// such a signal: the kernel hands it to a thread that has it unblocked, the application's own (in
// Python, the main thread, where the handlers run and where a blocking wait is cut short by the
// signal). A worker that took a Ctrl-C would only set Python's flag, and a main thread asleep on a
// queue would see it only when it next woke. Faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP,
// SIGABRT, SIGSYS) stay unblocked: they belong to the thread that causes them.
class AsyncSignalsHeldBack {
 public:
  AsyncSignalsHeldBack() {
    sigset_t set;
    sigfillset(&set);
    for (const int fault : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS}) sigdelset(&set, fault);
    held_ = pthread_sigmask(SIG_BLOCK, &set, &previous_) == 0;
  }
  ~AsyncSignalsHeldBack() {
    if (held_) pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
  }
  AsyncSignalsHeldBack(const AsyncSignalsHeldBack&) = delete;
  AsyncSignalsHeldBack& operator=(const AsyncSignalsHeldBack&) = delete;

 private:
  sigset_t previous_{};
  bool held_ = false;
};
#else
struct AsyncSignalsHeldBack {
  AsyncSignalsHeldBack() {}  // no POSIX signal masks: nothing to hold back
};
#endif

// The workers' name in ps, top and /proc (Linux's limit: 15 characters).
void name_this_worker() {
#if defined(__linux__)
  pthread_setname_np(pthread_self(), "sdar-cpu");
#endif
}

// How long an idle worker polls for the next job before sleeping: longer than the gap between
// two matmuls of a step (norms, RoPE, attention on the caller), far shorter than between steps.
constexpr auto kSpin = std::chrono::microseconds(300);

// Which pool's worker this thread is, and its slot there (ThreadPool::slot).
struct WorkerSlot {
  const ThreadPool* pool = nullptr;
  int slot = 0;
};
thread_local WorkerSlot this_worker;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  const int extra = threads > 1 ? threads - 1 : 0;
  workers_.reserve(extra);
  const AsyncSignalsHeldBack held_back;  // the workers start with these signals blocked
  for (int i = 0; i < extra; ++i) {
    workers_.emplace_back([this, i] {
      this_worker = WorkerSlot{this, i + 1};
      name_this_worker();
      worker_loop();
    });
  }
}

ThreadPool::~ThreadPool() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

int ThreadPool::slot() const { return this_worker.pool == this ? this_worker.slot : 0; }

void ThreadPool::work() {
  for (int i = next_task_.fetch_add(1); i < tasks_; i = next_task_.fetch_add(1)) fn_(context_, i);
}

void ThreadPool::run(int tasks, TaskFn fn, void* context) {
  if (tasks <= 0) return;
  if (workers_.empty() || tasks == 1) {
    for (int i = 0; i < tasks; ++i) fn(context, i);
    return;
  }
  {
    // No worker is inside (the previous run waited for them), so the fields are ours to set.
    const std::lock_guard<std::mutex> lock(mutex_);
    tasks_ = tasks;
    fn_ = fn;
    context_ = context;
    next_task_.store(0);
    open_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  work();
  // Every task is claimed: close the job, then wait for the workers that joined it to finish
  // theirs. A worker that arrives later sees it closed and leaves the fields alone.
  open_.store(false);
  while (inside_.load() != 0) cpu_relax();
}

void ThreadPool::worker_loop() {
  std::uint64_t seen = generation_.load();
  for (;;) {
    std::uint64_t now = generation_.load();
    if (now == seen) {
      const auto until = std::chrono::steady_clock::now() + kSpin;
      while ((now = generation_.load()) == seen && !stop_.load() && std::chrono::steady_clock::now() < until) {
        for (int i = 0; i < 64; ++i) cpu_relax();
      }
      if (now == seen && !stop_.load()) {
        std::unique_lock<std::mutex> lock(mutex_);
        // stop_ too: a thread that starts after the destructor's wake-up must not wait for another.
        wake_.wait(lock, [&] { return generation_.load() != seen || stop_.load(); });
        now = generation_.load();
      }
    }
    seen = now;
    if (stop_.load()) return;
    // Join: announce first, then check the job is still open and still the one seen (sequentially
    // consistent: either the caller's wait sees this worker inside, or this worker sees it closed).
    inside_.fetch_add(1);
    if (open_.load() && generation_.load() == seen) work();
    inside_.fetch_sub(1);
  }
}

}  // namespace sdar::cpu
