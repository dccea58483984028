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
  samplers_.clear();
  samplers_.push_back(std::make_unique<Sampler>(spec.vocab_size));
  const auto cells = static_cast<std::size_t>(spec.batch) * static_cast<std::size_t>(spec.max_context);
  sequence_ = Buffer(host_allocator(), sizeof(std::int64_t) * cells);
  masked_ = Buffer(host_allocator(), cells);
  const auto L = static_cast<std::size_t>(spec.block_length);
  const auto positions = static_cast<std::size_t>(spec.batch) * L;
  tasks_.reserve(positions);
  row_masked_.assign(static_cast<std::size_t>(spec.batch), 0);
  chosen_.assign(L, 0);
  confidence_.assign(positions, 0.0);
  samples_.resize(positions);
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
  engine_ = &engine;
  const auto start = std::chrono::steady_clock::now();
  engine.run(kind, past_len, tokens);
  engine_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void HostBackend::sample_tasks(int first, int end, int block_start, Sampler& sampler) {
  const GenerationConfig& config = *call_.config;
  const auto L = static_cast<std::size_t>(spec_.block_length);
  const auto V = static_cast<std::size_t>(spec_.vocab_size);
  const bool entropy_bounded = config.remasking == RemaskPolicy::EntropyBounded;
  const SampleParams params{config.temperature, config.top_k, config.top_p, entropy_bounded};
  for (int i = first; i < end; ++i) {
    const SampleTask& task = tasks_[static_cast<std::size_t>(i)];
    const std::size_t at = static_cast<std::size_t>(task.row) * L + static_cast<std::size_t>(task.offset);
    const float* logits = buffers_->logits() + at * V;
    Sample& sample = samples_[at];
    if (task.argmax_only) {
      // NaN marks a confidence that was never computed (confidence_decides: it is never read)
      sample = {sampler.argmax(logits), std::numeric_limits<double>::quiet_NaN()};
    } else {
      const double u = config.temperature == 0.0
                           ? 0.0
                           : philox_uniform(config.seed, (*call_.row_ids)[static_cast<std::size_t>(task.row)],
                                            row_steps_[static_cast<std::size_t>(task.row)],
                                            static_cast<std::uint32_t>(block_start + task.offset));
      sample = sampler.sample(logits, params, u);
    }
    // What the step's position rule ranks: the entropy under entropy_bounded, else the confidence.
    confidence_[at] = entropy_bounded && !task.argmax_only ? sample.entropy : sample.confidence;
  }
}

int HostBackend::unmask_step(const StepRequest& request) {
  const GenerationConfig& config = *call_.config;
  const int L = spec_.block_length;
  const int rows = static_cast<int>(call_.prompts->size());
  const auto stride = static_cast<std::size_t>(spec_.max_context);
  const auto block_at = [&](int r) {
    return static_cast<std::size_t>(r) * stride + static_cast<std::size_t>(request.block_start);
  };
  // 1. The positions to sample, every row's (rule 4; step_rules.h: sequential samples only the
  // positions it may fill).
  tasks_.clear();
  for (int r = 0; r < rows; ++r) {
    int& masked = row_masked_[static_cast<std::size_t>(r)];
    masked = 0;
    if ((*request.done)[static_cast<std::size_t>(r)]) continue;
    const std::uint8_t* row_mask = masked_.as<std::uint8_t>() + block_at(r);
    masked = rules::masked_count(row_mask, L);
    if (masked == 0) continue;  // finished block: left untouched (rule 8)
    // A greedy step that fills every sampled position needs no confidence: its softmax over the
    // vocabulary (most of the host's time per step with a large vocabulary) is skipped.
    const bool argmax_only =
        config.temperature == 0.0 && !confidence_decides(config.remasking, row_mask, L, request.scheduled);
    for (int j = 0; j < L; ++j) {
      if (samples_position(config.remasking, row_mask, L, j, request.scheduled)) tasks_.push_back({r, j, argmax_only});
    }
  }
  // 2. Sampled in groups over the engine's threads (idle between its passes), each group with its
  // own sampler; every position's sample depends on its logits and its uniform alone.
  // At most kMaxSampleGroups: each group's sampler holds ~12 bytes per vocabulary entry of scratch.
  constexpr int kMaxSampleGroups = 8;
  const int count = static_cast<int>(tasks_.size());
  const int threads = engine_ != nullptr ? std::min(engine_->host_threads(), kMaxSampleGroups) : 1;
  const int groups = std::max(1, std::min(count, threads));
  while (static_cast<int>(samplers_.size()) < groups) samplers_.push_back(std::make_unique<Sampler>(spec_.vocab_size));
  if (groups == 1) {
    sample_tasks(0, count, request.block_start, *samplers_.front());
  } else {
    struct Split {
      HostBackend* self;
      int count;
      int groups;
      int block_start;
    } split{this, count, groups, request.block_start};
    engine_->run_host_tasks(
        groups,
        [](void* context, int g) {
          const auto& s = *static_cast<const Split*>(context);
          s.self->sample_tasks(s.count * g / s.groups, s.count * (g + 1) / s.groups, s.block_start,
                               *s.self->samplers_[static_cast<std::size_t>(g)]);
        },
        &split);
  }
  // 3. Each row's choice of positions (rule 5) from its confidences, and the unmasking.
  int active = 0;
  for (int r = 0; r < rows; ++r) {
    const int masked = row_masked_[static_cast<std::size_t>(r)];
    if (masked == 0) continue;
    std::int64_t* row = sequence_.as<std::int64_t>() + block_at(r);
    std::uint8_t* row_mask = masked_.as<std::uint8_t>() + block_at(r);
    const std::size_t first = static_cast<std::size_t>(r) * static_cast<std::size_t>(L);
    const int filled = select_positions(config.remasking, step_threshold(config), row_mask, L,
                                        confidence_.data() + first, request.scheduled, chosen_.data());
    for (int j = 0; j < L; ++j) {
      if (chosen_[static_cast<std::size_t>(j)] == 0) continue;
      row[j] = samples_[first + static_cast<std::size_t>(j)].token;
      row_mask[j] = 0;
    }
    row_steps_[static_cast<std::size_t>(r)] += 1;
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
