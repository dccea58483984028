// The GPU decoding backend: KV cache, step buffers, the token sequence and the masks in device
// memory; each denoising step is one unmasking launch (cuda/unmask.h) on the backend's
// stream, followed by the step's only host sync: a 4-byte copy of "rows still active". The full
// logits never leave the device; per block, B*L token ids come back for the stop check and the
// block callback.
//
// Engines see the stream in EngineBindings::stream and enqueue on it (TensorRT), or synchronise.
// Engine time and the prefill's time are measured with CUDA events (the work, not its enqueue)
// and read at the next sync.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda/stream.h"
#include "cuda/unmask.h"
#include "decode_backend.h"

namespace sdar::cuda {

class DeviceBackend final : public DecodeBackend {
 public:
  // Uses the current CUDA device; throws DeviceError naming the problem and the fix without a
  // usable GPU (no driver, driver too old, no device).
  DeviceBackend();
  ~DeviceBackend() override;
  DeviceBackend(const DeviceBackend&) = delete;
  DeviceBackend& operator=(const DeviceBackend&) = delete;

  std::shared_ptr<Allocator> allocator() const override { return allocator_; }
  std::uintptr_t stream() const override { return reinterpret_cast<std::uintptr_t>(stream_.get()); }
  void attach(const ModelSpec& spec, const StepBuffers& buffers) override;
  void begin_call(const CallSetup& setup) override;
  void pack_ids(int start, int tokens) override;
  void run_engine(Engine& engine, GraphKind kind, std::int64_t past_len, int tokens) override;
  int unmask_step(const StepRequest& request) override;
  void read_block(int block_start, std::vector<std::int64_t>& tokens) override;
  // Two strided copies into pageable memory and a sync: called per step only for a step callback.
  void read_block_state(int block_start, std::vector<std::int64_t>& tokens, std::vector<std::uint8_t>& masked) override;
  double engine_seconds() override;
  void mark_prefill_end() override;
  double prefill_seconds(std::chrono::steady_clock::time_point call_start) override;
  void after_failure() noexcept override;

 private:
  void require_usable() const;
  void upload_done(const std::vector<std::uint8_t>& done);
  UnmaskWorkspace& workspace(bool sampling);
  // Adds the event-timed engine passes since the last sync (call after a stream sync).
  void collect_engine_time();

  std::shared_ptr<Allocator> allocator_;
  Stream stream_;
  ModelSpec spec_;
  const StepBuffers* buffers_ = nullptr;
  CallSetup call_;
  Buffer sequence_;   // int64 [B, max_context]
  Buffer masked_;     // uint8 [B, max_context]
  Buffer row_done_;   // uint8 [B]
  Buffer row_ids_;    // uint32 [B]
  Buffer row_steps_;  // uint32 [B]
  PinnedBuffer host_done_;
  PinnedBuffer host_block_;  // int64 [B, L]
  std::vector<std::uint8_t> uploaded_done_;  // what row_done_ holds; empty: unknown
  // Greedy needs no sort scratch; the sampling workspace (~24 bytes * B * L * V) is created on
  // the first call with temperature > 0 and kept.
  std::unique_ptr<UnmaskWorkspace> greedy_;
  std::unique_ptr<UnmaskWorkspace> sampling_;
  std::vector<Event> pass_start_, pass_end_;  // grown on demand, reused
  // The prefill on the device timeline: `call_ready_` is recorded when begin_call has synchronised
  // (host time `call_ready_at_`), `prefill_end_` after the last prefill pass.
  Event call_ready_{true}, prefill_end_{true};
  std::chrono::steady_clock::time_point call_ready_at_{};
  std::size_t passes_pending_ = 0;
  double engine_seconds_ = 0.0;
  std::string failure_;  // set when the CUDA context failed: the backend refuses further calls
};

}  // namespace sdar::cuda
