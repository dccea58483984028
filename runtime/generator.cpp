#include "generator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>

#include "errors.h"
#include "host_backend.h"
#include "remask.h"

namespace sdar {

namespace {
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A parameter value as a user wrote it: 0.9, 1e-05, nan (std::to_string gives 0.900000).
std::string number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

bool contains(const std::vector<std::int64_t>& ids, std::int64_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}
}  // namespace

struct Generator::Plan {
  int rows = 0;
  int prompt_length = 0;
  int total = 0;
  int steps = 0;
  std::vector<int> schedule;
  std::vector<std::int64_t> stop_ids;
  std::vector<std::uint32_t> row_ids;
};

Generator::Generator(const ModelSpec& spec, std::shared_ptr<Engine> engine)
    : Generator(spec, std::move(engine), std::make_unique<HostBackend>()) {}

Generator::Generator(const ModelSpec& spec, std::shared_ptr<Engine> engine, std::unique_ptr<DecodeBackend> backend)
    : spec_((spec.validate(), spec)),
      engine_(std::move(engine)),
      backend_(backend ? std::move(backend) : throw InvalidArgument("Generator needs a decoding backend")),
      cache_(spec_, backend_->allocator()),
      buffers_(spec_, backend_->allocator()),
      contents_(spec_.batch) {
  if (!engine_) throw InvalidArgument("Generator needs an engine");
  backend_->attach(spec_, buffers_);
  bindings_.input_ids = reinterpret_cast<std::uintptr_t>(buffers_.input_ids());
  bindings_.ids_capacity = buffers_.ids_capacity();
  bindings_.logits = reinterpret_cast<std::uintptr_t>(buffers_.logits());
  for (int i = 0; i < spec_.num_layers; ++i) {
    bindings_.key_cache.push_back(reinterpret_cast<std::uintptr_t>(cache_.base(i, KvKind::Key)));
    bindings_.value_cache.push_back(reinterpret_cast<std::uintptr_t>(cache_.base(i, KvKind::Value)));
  }
  bindings_.row_bytes = cache_.row_bytes();
  bindings_.batch = spec_.batch;
  bindings_.num_layers = spec_.num_layers;
  bindings_.num_kv_heads = spec_.num_kv_heads;
  bindings_.head_dim = spec_.head_dim;
  bindings_.block_length = spec_.block_length;
  bindings_.vocab_size = spec_.vocab_size;
  bindings_.max_context = spec_.max_context;
  bindings_.kv_dtype = spec_.kv_dtype;
  bindings_.device_memory = backend_->allocator()->is_device();
  bindings_.stream = backend_->stream();
  engine_->bind(bindings_);
}

Generator::Plan Generator::validate(const std::vector<std::vector<std::int64_t>>& prompts,
                                    const GenerationConfig& config) const {
  const int L = spec_.block_length;
  Plan plan;
  if (prompts.empty()) throw InvalidArgument("no prompts given");
  if (static_cast<int>(prompts.size()) > spec_.batch) {
    throw InvalidArgument(std::to_string(prompts.size()) + " prompts given but the artifact's batch is " +
                          std::to_string(spec_.batch) + "; split them or re-export with a larger --batch");
  }
  plan.rows = static_cast<int>(prompts.size());
  const std::size_t n = prompts.front().size();
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    const auto& prompt = prompts[r];
    if (prompt.empty()) throw InvalidArgument("prompt " + std::to_string(r) + " is empty");
    if (prompt.size() != n) {
      throw InvalidArgument("prompts in one call must have equal length: prompt 0 has " + std::to_string(n) +
                            " tokens, prompt " + std::to_string(r) + " has " + std::to_string(prompt.size()));
    }
    for (std::size_t i = 0; i < prompt.size(); ++i) {
      if (prompt[i] < 0 || prompt[i] >= spec_.vocab_size) {
        throw InvalidArgument("prompt " + std::to_string(r) + " token " + std::to_string(i) + " has id " +
                              std::to_string(prompt[i]) + ", outside [0, " + std::to_string(spec_.vocab_size) + ")");
      }
    }
  }
  if (config.max_new_tokens < 1) {
    throw InvalidArgument("max_new_tokens must be at least 1, got " + std::to_string(config.max_new_tokens));
  }
  plan.steps = config.denoising_steps.value_or(L);
  if (plan.steps < 1 || plan.steps > L) {
    throw InvalidArgument("denoising_steps must be in [1, block_length=" + std::to_string(L) + "], got " +
                          std::to_string(plan.steps) + " (unset: " + std::to_string(L) + ", one token per step)");
  }
  plan.schedule = denoising_schedule(L, plan.steps);
  if (!(config.threshold > 0.0 && config.threshold <= 1.0)) {
    throw InvalidArgument("threshold must be in (0, 1], got " + number(config.threshold) +
                          "; 0.9 is the default, lower values unmask more tokens per step");
  }
  if (!(config.eb_threshold >= 0.0) || !std::isfinite(config.eb_threshold)) {
    throw InvalidArgument("eb_threshold must be a finite number >= 0 (an entropy budget in nats), got " +
                          number(config.eb_threshold) +
                          "; 0.35 is the default, larger values unmask more tokens per step");
  }
  if (!(config.temperature >= 0.0) || !std::isfinite(config.temperature)) {
    throw InvalidArgument("temperature must be a finite number >= 0 (0 = greedy), got " + number(config.temperature));
  }
  if (config.top_k < 0) throw InvalidArgument("top_k must be >= 0 (0 = off), got " + std::to_string(config.top_k));
  if (!(config.top_p > 0.0 && config.top_p <= 1.0)) {
    throw InvalidArgument("top_p must be in (0, 1] (1 = off), got " + number(config.top_p));
  }
  plan.stop_ids = spec_.eos_ids;
  for (const std::int64_t id : config.stop_ids) {
    if (id < 0 || id >= spec_.vocab_size) {
      throw InvalidArgument("stop id " + std::to_string(id) + " is outside the vocabulary [0, " +
                            std::to_string(spec_.vocab_size) + "); pass a token id below " +
                            std::to_string(spec_.vocab_size) + " or a stop string");
    }
    if (!contains(plan.stop_ids, id)) plan.stop_ids.push_back(id);
  }
  if (!config.row_ids.empty() && config.row_ids.size() != prompts.size()) {
    throw InvalidArgument("row_ids has " + std::to_string(config.row_ids.size()) + " entries for " +
                          std::to_string(prompts.size()) + " prompts");
  }
  for (int r = 0; r < plan.rows; ++r) {
    plan.row_ids.push_back(config.row_ids.empty() ? static_cast<std::uint32_t>(r)
                                                  : config.row_ids[static_cast<std::size_t>(r)]);
  }
  const std::int64_t need = static_cast<std::int64_t>(n) + config.max_new_tokens;
  const std::int64_t total = (need + L - 1) / L * L;
  if (total > spec_.max_context) {
    throw ContextOverflow("prompt of " + std::to_string(n) + " tokens + max_new_tokens " +
                          std::to_string(config.max_new_tokens) + " needs " + std::to_string(total) +
                          " positions (rounded up to whole blocks of " + std::to_string(L) +
                          "), more than max_context " + std::to_string(spec_.max_context) +
                          "; shorten the prompt, lower max_new_tokens, or re-export with a larger --max-context");
  }
  plan.prompt_length = static_cast<int>(n);
  plan.total = static_cast<int>(total);
  return plan;
}

GenerationResult Generator::generate(const std::vector<std::vector<std::int64_t>>& prompts,
                                     const GenerationConfig& config, const BlockCallback& on_block,
                                     const Cancellation& cancel) {
  CallOptions options;
  options.on_block = on_block;
  options.cancel = cancel;
  return generate(prompts, config, options);
}

std::vector<std::int64_t> Generator::cached_tokens(int row) {
  if (row < 0 || row >= spec_.batch) {
    throw InvalidArgument("row " + std::to_string(row) + " is outside [0, batch=" + std::to_string(spec_.batch) + ")");
  }
  const std::lock_guard<std::mutex> lock(mutex_);
  return contents_.row(row);
}

GenerationResult Generator::generate(const std::vector<std::vector<std::int64_t>>& prompts,
                                     const GenerationConfig& config, const CallOptions& options) {
  const std::lock_guard<std::mutex> lock(mutex_);
  try {
    return decode(prompts, config, options);
  } catch (...) {
    backend_->after_failure();
    throw;
  }
}

GenerationResult Generator::decode(const std::vector<std::vector<std::int64_t>>& prompts,
                                   const GenerationConfig& config, const CallOptions& options) {
  const auto call_start = Clock::now();
  const Plan plan = validate(prompts, config);
  const BlockCallback& on_block = options.on_block;
  const Cancellation& cancel = options.cancel;
  // From here on the cache changes: nothing in it is trusted until this call records it.
  const CacheContents::Rows cached_before = contents_.take();
  DecodeBackend& backend = *backend_;
  Engine& engine = *engine_;

  const int L = spec_.block_length;
  const int B = spec_.batch;
  const int n = plan.prompt_length;
  const int m = config.max_new_tokens;
  CallSetup setup;
  setup.prompts = &prompts;
  setup.prompt_length = n;
  setup.total = plan.total;
  setup.row_ids = &plan.row_ids;
  setup.config = &config;
  backend.begin_call(setup);
  // One engine pass over positions [start, start + tokens) of every row, unless the call is
  // cancelled (returns false). The cancellation check runs before every pass, on every backend:
  // a cancelled call ends within one forward. Ending between passes is safe: every call starts
  // over from begin_call, and the K/V rows written so far are never read as valid.
  bool cancelled = false;
  const auto engine_pass = [&](GraphKind kind, int start, int tokens, std::int64_t past) {
    if (cancel.poll) cancel.poll();
    if (cancel.token != nullptr && cancel.token->cancelled()) {
      cancelled = true;
      return false;
    }
    if (tokens > buffers_.ids_capacity()) {
      throw EngineError("internal: " + std::to_string(tokens) + " tokens exceed the ids buffer");
    }
    backend.pack_ids(start, tokens);
    backend.run_engine(engine, kind, past, tokens);
    return true;
  };

  GenerationResult result;
  result.rows.resize(static_cast<std::size_t>(plan.rows));
  Stats& stats = result.stats;
  stats.num_rows = plan.rows;

  // Rule 2: prefill the whole blocks of the prompt in chunks, after what the cache already holds.
  const int prefill_len = n / L * L;
  const int chunk = spec_.effective_prefill_chunk();
  const int reused = options.reuse_cache ? CacheContents::reusable(cached_before, prompts, L, prefill_len) : 0;
  stats.cached_tokens = reused;
  CallRecord record(prompts, B, prefill_len, plan.total);
  std::int64_t past_len = reused;
  for (int start = reused; start < prefill_len; start += chunk) {
    const int tokens = std::min(chunk, prefill_len - start);
    if (!engine_pass(GraphKind::Prefill, start, tokens, past_len)) break;
    ++stats.nfe_prefill;
    past_len += tokens;
  }
  backend.mark_prefill_end();

  std::vector<std::uint8_t> done(static_cast<std::size_t>(B), 1);
  for (int r = 0; r < plan.rows; ++r) done[static_cast<std::size_t>(r)] = 0;
  std::vector<std::vector<std::int64_t>> block_tokens(static_cast<std::size_t>(plan.rows));
  std::vector<std::int64_t> block(static_cast<std::size_t>(B) * static_cast<std::size_t>(L));
  StepRequest request;
  request.done = &done;

  bool pending_commit = false;  // the previous block is finished but not yet in the cache
  const int first_block = prefill_len / L;
  const int last_block = plan.total / L - 1;
  std::vector<std::int64_t> step_tokens;
  std::vector<std::uint8_t> step_masked;
  StepView view;
  view.rows = plan.rows;
  view.block_length = L;
  view.tokens = &step_tokens;
  view.masked = &step_masked;
  for (int b = first_block; b <= last_block && !cancelled; ++b) {
    const int block_start = b * L;
    const auto block_start_time = Clock::now();  // the block's latency includes its commit pass
    if (pending_commit && !config.fused_commit) {
      if (!engine_pass(GraphKind::Prefill, block_start - L, L, past_len)) break;
      ++stats.nfe_commit;
      past_len += L;
      pending_commit = false;
    }

    // Every running row has masked positions in every block of the call (they start at n and
    // end at total), so all of them are active at the block's first step.
    int active = static_cast<int>(std::count(done.begin(), done.begin() + plan.rows, std::uint8_t{0}));
    int step = 0;
    while (active > 0) {
      if (pending_commit) {  // fused: commit the previous block + first step of this one
        if (!engine_pass(GraphKind::Fused, block_start - L, 2 * L, past_len)) break;
        ++stats.nfe_fused;
        past_len += L;
        pending_commit = false;
      } else {
        if (!engine_pass(GraphKind::Decode, block_start, L, past_len)) break;
        ++stats.nfe_denoise;
      }
      request.block_start = block_start;
      request.scheduled = step < plan.steps ? plan.schedule[static_cast<std::size_t>(step)] : L;
      active = backend.unmask_step(request);
      if (options.on_step) {
        backend.read_block_state(block_start, step_tokens, step_masked);
        view.block_index = b - first_block;
        view.step = step;
        view.block_start = block_start;
        if (!options.on_step(view)) {
          cancelled = true;
          break;
        }
      }
      ++step;
    }
    if (cancelled) break;  // mid-block: the block's tokens are not output
    stats.steps_per_block.push_back(step);

    // Rule 7: collect this block's output and each row's status.
    backend.read_block(block_start, block);
    record.add_block(block);
    bool all_done = true;
    for (int r = 0; r < plan.rows; ++r) {
      auto& out = block_tokens[static_cast<std::size_t>(r)];
      out.clear();
      auto& row_result = result.rows[static_cast<std::size_t>(r)];
      if (done[static_cast<std::size_t>(r)]) continue;
      const std::int64_t* row = block.data() + static_cast<std::size_t>(r) * static_cast<std::size_t>(L);
      for (int p = std::max(n, block_start); p < block_start + L; ++p) {
        if (p - n >= m) break;
        const std::int64_t token = row[p - block_start];
        if (contains(plan.stop_ids, token)) {
          row_result.finish_reason = "stop";
          done[static_cast<std::size_t>(r)] = 1;
          break;
        }
        out.push_back(token);
        row_result.tokens.push_back(token);
      }
      if (!done[static_cast<std::size_t>(r)] && static_cast<int>(row_result.tokens.size()) >= m) {
        row_result.finish_reason = "length";
        done[static_cast<std::size_t>(r)] = 1;
      }
      all_done = all_done && done[static_cast<std::size_t>(r)];
    }
    stats.block_seconds.push_back(seconds_since(block_start_time));
    if (b == first_block) stats.time_to_first_block = seconds_since(call_start);
    if (on_block && !on_block(b - first_block, block_tokens)) {
      cancelled = true;
      break;
    }
    if (all_done) break;
    pending_commit = true;  // rule 6: the final block is never committed
  }
  if (cancelled) {
    for (int r = 0; r < plan.rows; ++r) {
      if (!done[static_cast<std::size_t>(r)]) result.rows[static_cast<std::size_t>(r)].finish_reason = "cancelled";
    }
  }

  for (auto& row : result.rows) {
    if (row.finish_reason.empty()) row.finish_reason = "length";  // unreachable: the last block ends it
  }
  for (const auto& row : result.rows) stats.tokens_generated += static_cast<std::int64_t>(row.tokens.size());
  stats.engine_seconds = backend.engine_seconds();
  stats.prefill_seconds = backend.prefill_seconds(call_start);
  stats.total_seconds = seconds_since(call_start);
  contents_.set(cached_before, record.sequences(), plan.rows, reused, static_cast<int>(past_len));
  return result;
}

}  // namespace sdar
