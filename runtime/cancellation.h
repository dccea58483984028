// Stopping a running generate() call from outside it. The decoding loop consults a Cancellation
// before every engine pass (prefill chunk, commit, denoising step), on the host and the device
// backend alike, so a call ends within one forward of the request instead of at the end of the
// call or of the block.
#pragma once

#include <atomic>
#include <functional>

namespace sdar {

// A flag any thread may set while another thread is inside generate(). Setting it ends the call
// cleanly: rows still running get finish reason "cancelled" and keep the tokens of their
// finished blocks. A token is one-shot: once cancelled it stays cancelled.
class CancelToken {
 public:
  void cancel() noexcept { cancelled_.store(true, std::memory_order_release); }
  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_acquire); }

 private:
  std::atomic<bool> cancelled_{false};
};

// What generate() checks at its safe points. `poll` runs first and may throw to abort the call
// with that exception (the Python bindings raise KeyboardInterrupt there for a pending Ctrl-C);
// then a cancelled `token` ends the call cleanly. Either may be empty; `token` must outlive the call.
struct Cancellation {
  const CancelToken* token = nullptr;
  std::function<void()> poll;
};

}  // namespace sdar
