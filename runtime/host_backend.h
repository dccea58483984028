// The CPU decoding backend: the token sequence and masks in host memory, the engine timed with
// the host clock, and each denoising step decided by the CPU sampler (float64, sampler.h) and
// the position rules of step_rules.h (the code the GPU kernels run, through remask.h).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "decode_backend.h"
#include "sampler.h"

namespace sdar {

class HostBackend final : public DecodeBackend {
 public:
  HostBackend() = default;

  std::shared_ptr<Allocator> allocator() const override { return host_allocator(); }
  void attach(const ModelSpec& spec, const StepBuffers& buffers) override;
  void begin_call(const CallSetup& setup) override;
  void pack_ids(int start, int tokens) override;
  void run_engine(Engine& engine, GraphKind kind, std::int64_t past_len, int tokens) override;
  int unmask_step(const StepRequest& request) override;
  void read_block(int block_start, std::vector<std::int64_t>& tokens) override;
  void read_block_state(int block_start, std::vector<std::int64_t>& tokens, std::vector<std::uint8_t>& masked) override;
  double engine_seconds() override { return engine_seconds_; }

 private:
  ModelSpec spec_;
  const StepBuffers* buffers_ = nullptr;
  // One sampler (with its vocabulary-sized scratch) per group of positions sampled together.
  std::vector<std::unique_ptr<Sampler>> samplers_;
  Engine* engine_ = nullptr;  // the engine of the last pass: its logits are sampled, its threads lent
  Buffer sequence_;  // int64 [B, max_context]: the tokens of every row
  Buffer masked_;    // uint8 [B, max_context]: 1 where the position is still masked
  CallSetup call_;
  std::vector<std::uint32_t> row_steps_;  // denoising steps each row has run in this call
  double engine_seconds_ = 0.0;
  // A position a step samples: row r, block offset j.
  struct SampleTask {
    int row = 0;
    int offset = 0;
    bool argmax_only = false;
  };
  // Samples tasks_[first, end) of the step over the block at block_start.
  void sample_tasks(int first, int end, int block_start, Sampler& sampler);

  // Per-step scratch, sized once (no allocation per step): [B * L] per position, [L] per row.
  std::vector<SampleTask> tasks_;
  std::vector<int> row_masked_;  // [B] masked positions of the block, 0: row left untouched
  std::vector<std::uint8_t> chosen_;
  std::vector<double> confidence_;  // per position: what the remasking ranks (entropy_bounded: entropy)
  std::vector<Sample> samples_;
};

}  // namespace sdar
