// Where a call's token sequence lives and how one denoising step is decided. The Generator's
// loop (CONTRACTS.md decoding rules) is the same on every device; a backend supplies the memory
// of the cache and step buffers, moves token ids into the engine's input, runs and times the
// engine, and applies one unmasking step:
//   - HostBackend (host_backend.h): host memory, the CPU sampler (sampler.h, remask.h);
//   - cuda::DeviceBackend (cuda/device_backend.h): device memory, the runtime/cuda kernels, one
//     host sync per denoising step for the "rows still active" count.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "buffer.h"
#include "engine.h"
#include "generation_config.h"
#include "model_spec.h"
#include "step_buffers.h"

namespace sdar {

// One call's inputs that stay fixed for the whole call.
struct CallSetup {
  const std::vector<std::vector<std::int64_t>>* prompts = nullptr;  // 1..B, equal length n
  int prompt_length = 0;                  // n
  int total = 0;                          // positions of the call, a multiple of L
  const std::vector<std::uint32_t>* row_ids = nullptr;  // Philox row word per prompt
  const GenerationConfig* config = nullptr;
};

// One denoising step over the block at `block_start`.
struct StepRequest {
  int block_start = 0;
  int scheduled = 1;  // s[k] of this step (rule 3)
  const std::vector<std::uint8_t>* done = nullptr;  // [B] 1: finished row, left untouched
};

// The start of a call, in one layout for every backend: row r of `tokens` / `masked` (row stride
// `stride`, positions [0, total)) holds prompt r, or prompt 0 for rows beyond the call's prompts,
// then mask ids; `masked` is 1 from the prompt's end on.
void write_call_rows(const CallSetup& setup, int batch, std::int64_t mask_id, std::size_t stride,
                     std::int64_t* tokens, std::uint8_t* masked);

class DecodeBackend {
 public:
  virtual ~DecodeBackend() = default;

  // Memory of the KV cache and the step buffers (host or device).
  virtual std::shared_ptr<Allocator> allocator() const = 0;
  // The CUDA stream engines must order their work on (as an integer); 0 on the host.
  virtual std::uintptr_t stream() const { return 0; }
  // Called once by the Generator, after its step buffers exist.
  virtual void attach(const ModelSpec& spec, const StepBuffers& buffers) = 0;

  // Starts a call: rows [0, prompts) hold their prompt, rows beyond repeat prompt 0 (the graphs
  // have a static batch; those rows are discarded); positions [n, total) are masked.
  virtual void begin_call(const CallSetup& setup) = 0;
  // Copies positions [start, start + tokens) of every row into input_ids as [B, tokens]
  // (the Generator checks tokens <= ids_capacity).
  virtual void pack_ids(int start, int tokens) = 0;
  // One engine pass, timed (engine_seconds).
  virtual void run_engine(Engine& engine, GraphKind kind, std::int64_t past_len, int tokens) = 0;
  // Samples and unmasks on the logits of the pass just run (rules 3-5; rows with done[r] and rows
  // whose block has no mask left are untouched). Returns the number of rows that still have
  // masked positions in the block.
  virtual int unmask_step(const StepRequest& request) = 0;
  // The block's tokens of every row into `tokens` as [B, L] (host memory).
  virtual void read_block(int block_start, std::vector<std::int64_t>& tokens) = 0;
  // The block's tokens and masked flags of every row, [B, L] each, in the middle of denoising
  // (only for a step callback: on the device it is a copy back and a sync per step).
  virtual void read_block_state(int block_start, std::vector<std::int64_t>& tokens,
                                std::vector<std::uint8_t>& masked) = 0;
  // Seconds inside the engine since begin_call.
  virtual double engine_seconds() = 0;
  // Called once the prompt's prefill passes are issued. prefill_seconds() (read at the end of the
  // call) is then the time from `call_start` to the end of the prefill's work: on the host the
  // passes are done when they return; the device backend times the work with CUDA events, not
  // the enqueue.
  virtual void mark_prefill_end() { prefill_end_ = std::chrono::steady_clock::now(); }
  virtual double prefill_seconds(std::chrono::steady_clock::time_point call_start) {
    return std::chrono::duration<double>(prefill_end_ - call_start).count();
  }
  // Called when a call ends with an exception, before it propagates: a backend that can no
  // longer work (a failed GPU context) remembers why and refuses later calls with that reason.
  virtual void after_failure() noexcept {}

 private:
  std::chrono::steady_clock::time_point prefill_end_{};
};

}  // namespace sdar
