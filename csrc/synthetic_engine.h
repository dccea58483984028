// An Engine written in C++ that never enters Python: it writes fixed, position-dependent logits
// into host buffers and can spend a set time per pass. To the decoding loop it looks like a
// TensorRT engine (no Python, no GIL), so tests use it to check that Ctrl-C and cancellation
// reach the core's loop by themselves, and it measures the loop's own cost per step.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#include "engine.h"
#include "errors.h"

namespace sdar {

class SyntheticEngine final : public Engine {
 public:
  SyntheticEngine(std::int64_t mask_id, double pass_seconds) : mask_id_(mask_id), pass_seconds_(pass_seconds) {
    if (!(pass_seconds >= 0.0)) throw InvalidArgument("pass_seconds must be >= 0");
  }

  void bind(const EngineBindings& bindings) override {
    if (bindings.device_memory) {
      throw InvalidArgument("SyntheticEngine writes host memory: use it with device='cpu'");
    }
    bindings_ = bindings;
  }

  // Every decoded position p gets one clear winner, token (7 p + 1) mod V (the next id when that
  // is the mask id), so the tokens are known in advance and every step unmasks the whole block.
  void run(GraphKind kind, std::int64_t past_len, int tokens) override {
    calls_.fetch_add(1, std::memory_order_relaxed);
    if (pass_seconds_ > 0.0) std::this_thread::sleep_for(std::chrono::duration<double>(pass_seconds_));
    if (kind == GraphKind::Prefill) return;
    const int L = bindings_.block_length;
    const int V = bindings_.vocab_size;
    auto* logits = reinterpret_cast<float*>(bindings_.logits);
    for (int r = 0; r < bindings_.batch; ++r) {
      for (int j = 0; j < L; ++j) {
        float* row = logits + (static_cast<std::size_t>(r) * L + j) * static_cast<std::size_t>(V);
        for (int v = 0; v < V; ++v) row[v] = 0.0f;
        const std::int64_t position = past_len + tokens - L + j;
        row[winner(position)] = 30.0f;
      }
    }
  }

  // The token the engine makes position `position` decode to.
  int winner(std::int64_t position) const {
    const int V = bindings_.vocab_size;
    const int token = static_cast<int>((7 * position + 1) % V);
    return token == mask_id_ ? (token + 1) % V : token;
  }

  long long calls() const { return calls_.load(std::memory_order_relaxed); }

 private:
  const std::int64_t mask_id_;
  const double pass_seconds_;
  EngineBindings bindings_;
  std::atomic<long long> calls_{0};
};

}  // namespace sdar
