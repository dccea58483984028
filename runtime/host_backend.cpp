#include "host_backend.h"

#include <algorithm>
#include <chrono>
#include <limits>

#include "philox.h"
#include "remask.h"
#include "step_rules.h"

namespace sdar {

void HostBackend::attach(const ModelSpec& spec, const StepBuffers& buffers) {
  spec_ = spec;
  buffers_ = &buffers;
  sampler_ = std::make_unique<Sampler>(spec.vocab_size);
  const auto cells = static_cast<std::size_t>(spec.batch) * static_cast<std::size_t>(spec.max_context);
  sequence_ = Buffer(host_allocator(), sizeof(std::int64_t) * cells);
  masked_ = Buffer(host_allocator(), cells);
  const auto L = static_cast<std::size_t>(spec.block_length);
  chosen_.assign(L, 0);
  confidence_.assign(L, 0.0);
  samples_.resize(L);
}

void HostBackend::begin_call(const CallSetup& setup) {
  call_ = setup;
  engine_seconds_ = 0.0;
  write_call_rows(setup, spec_.batch, spec_.mask_id, static_cast<std::size_t>(spec_.max_context),
                  sequence_.as<std::int64_t>(), masked_.as<std::uint8_t>());
  row_steps_.assign(setup.prompts->size(), 0);
}

void HostBackend::pack_ids(int start, int tokens) {
  const std::int64_t* seq = sequence_.as<std::int64_t>();
  std::int64_t* ids = buffers_->input_ids();
  const auto stride = static_cast<std::size_t>(spec_.max_context);
  for (int r = 0; r < spec_.batch; ++r) {
    std::copy_n(seq + static_cast<std::size_t>(r) * stride + static_cast<std::size_t>(start), tokens,
                ids + static_cast<std::size_t>(r) * static_cast<std::size_t>(tokens));
  }
}

void HostBackend::run_engine(Engine& engine, GraphKind kind, std::int64_t past_len, int tokens) {
  const auto start = std::chrono::steady_clock::now();
  engine.run(kind, past_len, tokens);
  engine_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int HostBackend::unmask_step(const StepRequest& request) {
  const GenerationConfig& config = *call_.config;
  const int L = spec_.block_length;
  const int V = spec_.vocab_size;
  const int rows = static_cast<int>(call_.prompts->size());
  const auto stride = static_cast<std::size_t>(spec_.max_context);
  const SampleParams sample_params{config.temperature, config.top_k, config.top_p};
  int active = 0;
  for (int r = 0; r < rows; ++r) {
    if ((*request.done)[static_cast<std::size_t>(r)]) continue;
    const std::size_t row_offset = static_cast<std::size_t>(r) * stride + static_cast<std::size_t>(request.block_start);
    std::int64_t* row = sequence_.as<std::int64_t>() + row_offset;
    std::uint8_t* row_mask = masked_.as<std::uint8_t>() + row_offset;
    const int masked = rules::masked_count(row_mask, L);
    if (masked == 0) continue;  // finished block: left untouched (rule 8)
    const std::uint32_t row_step = row_steps_[static_cast<std::size_t>(r)];
    // A greedy step that fills every sampled position needs no confidence: its softmax over the
    // vocabulary (most of the host's time per step with a large vocabulary) is skipped.
    const bool argmax_only =
        config.temperature == 0.0 && !confidence_decides(config.remasking, row_mask, L, request.scheduled);
    for (int j = 0; j < L; ++j) {
      // step_rules.h: sequential samples only the positions it may fill
      if (!samples_position(config.remasking, row_mask, L, j, request.scheduled)) continue;
      const float* logits = buffers_->logits() +
                            (static_cast<std::size_t>(r) * static_cast<std::size_t>(L) + static_cast<std::size_t>(j)) *
                                static_cast<std::size_t>(V);
      Sample& sample = samples_[static_cast<std::size_t>(j)];
      if (argmax_only) {
        // NaN marks a confidence that was never computed (and, by the rule above, is never read)
        sample = {sampler_->argmax(logits), std::numeric_limits<double>::quiet_NaN()};
      } else {
        const double u = config.temperature == 0.0
                             ? 0.0
                             : philox_uniform(config.seed, (*call_.row_ids)[static_cast<std::size_t>(r)], row_step,
                                              static_cast<std::uint32_t>(request.block_start + j));
        sample = sampler_->sample(logits, sample_params, u);
      }
      confidence_[static_cast<std::size_t>(j)] = sample.confidence;
    }
    const int filled = select_positions(config.remasking, config.threshold, row_mask, L, confidence_.data(),
                                        request.scheduled, chosen_.data());
    for (int j = 0; j < L; ++j) {
      if (chosen_[static_cast<std::size_t>(j)] == 0) continue;
      row[j] = samples_[static_cast<std::size_t>(j)].token;
      row_mask[j] = 0;
    }
    row_steps_[static_cast<std::size_t>(r)] = row_step + 1;
    if (masked > filled) ++active;
  }
  return active;
}

void HostBackend::read_block(int block_start, std::vector<std::int64_t>& tokens) {
  const int L = spec_.block_length;
  const auto stride = static_cast<std::size_t>(spec_.max_context);
  tokens.resize(static_cast<std::size_t>(spec_.batch) * static_cast<std::size_t>(L));
  for (int r = 0; r < spec_.batch; ++r) {
    const std::int64_t* row = sequence_.as<std::int64_t>() + static_cast<std::size_t>(r) * stride +
                              static_cast<std::size_t>(block_start);
    std::copy_n(row, L, tokens.begin() + static_cast<std::ptrdiff_t>(r) * L);
  }
}

void HostBackend::read_block_state(int block_start, std::vector<std::int64_t>& tokens,
                                   std::vector<std::uint8_t>& masked) {
  read_block(block_start, tokens);
  const int L = spec_.block_length;
  const auto stride = static_cast<std::size_t>(spec_.max_context);
  masked.resize(static_cast<std::size_t>(spec_.batch) * static_cast<std::size_t>(L));
  for (int r = 0; r < spec_.batch; ++r) {
    const std::uint8_t* row = masked_.as<std::uint8_t>() + static_cast<std::size_t>(r) * stride +
                              static_cast<std::size_t>(block_start);
    std::copy_n(row, L, masked.begin() + static_cast<std::ptrdiff_t>(r) * L);
  }
}

}  // namespace sdar
