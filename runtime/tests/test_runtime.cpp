// Standalone C++ checks of the generation core (no Python): ctest -R sdar_runtime.
// Build with -DSDAR_BUILD_TESTS=ON. The exhaustive comparison against the reference decoder lives
// in tests/test_core_decoding.py (through the bindings).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "errors.h"
#include "generator.h"
#include "philox.h"

namespace {

// Logits favour token (position * 7 + sum of the block's ids) % (V - 1); writes K rows = ids.
class ToyEngine final : public sdar::Engine {
 public:
  void bind(const sdar::EngineBindings& b) override { b_ = b; }
  void run(sdar::GraphKind kind, std::int64_t past_len, int tokens) override {
    ++calls;
    if (after_run_) after_run_(calls);
    if (kind == sdar::GraphKind::Fused) ++fused;
    const auto* ids = reinterpret_cast<const std::int64_t*>(b_.input_ids);
    auto* key0 = reinterpret_cast<float*>(b_.key_cache[0]);
    const std::size_t row_floats = b_.row_bytes / sizeof(float);
    for (int t = 0; t < tokens; ++t) key0[(static_cast<std::size_t>(past_len) + t) * row_floats] = static_cast<float>(ids[t]);
    if (kind == sdar::GraphKind::Prefill) return;
    auto* logits = reinterpret_cast<float*>(b_.logits);
    const int L = b_.block_length, V = b_.vocab_size;
    std::int64_t sum = 0;
    for (int t = tokens - L; t < tokens; ++t) sum += ids[t];
    for (int j = 0; j < L; ++j) {
      const std::int64_t pos = past_len + tokens - L + j;
      for (int v = 0; v < V; ++v) logits[j * V + v] = 0.0f;
      logits[j * V + static_cast<int>((pos * 7 + sum) % (V - 1))] = 3.0f + static_cast<float>(j);
    }
  }
  // With threads > 1, the host's sampling tasks run concurrently, each on its own thread, started
  // in reverse order (the contract: any order, any thread).
  void run_host_tasks(int tasks, void (*fn)(void*, int), void* context) override {
    if (threads <= 1) return sdar::Engine::run_host_tasks(tasks, fn, context);
    if (tasks > 1) ++split_steps;
    std::vector<std::thread> workers;
    for (int i = tasks - 1; i >= 0; --i) workers.emplace_back(fn, context, i);
    for (auto& w : workers) w.join();
  }
  int host_threads() const override { return threads; }
  int calls = 0;
  int fused = 0;
  int threads = 1;
  int split_steps = 0;  // steps whose sampling was split over more than one thread
  std::function<void(int)> after_run_;  // called with the pass count at the start of each pass

 private:
  sdar::EngineBindings b_;
};

sdar::ModelSpec toy_spec() {
  sdar::ModelSpec s;
  s.num_layers = 1;
  s.num_kv_heads = 1;
  s.head_dim = 2;
  s.vocab_size = 16;
  s.block_length = 4;
  s.max_context = 64;
  s.mask_id = 15;
  return s;
}

}  // namespace

int main() {
  const sdar::PhiloxCounter kat = sdar::philox4x32_10({0, 0, 0, 0}, {0, 0});
  CHECK(kat[0] == 0x6627e8d5u && kat[3] == 0x9b00dbd8u);

  auto fused_engine = std::make_shared<ToyEngine>();
  auto plain_engine = std::make_shared<ToyEngine>();
  sdar::Generator fused_gen(toy_spec(), fused_engine);
  sdar::Generator plain_gen(toy_spec(), plain_engine);
  sdar::GenerationConfig config;
  config.max_new_tokens = 13;
  config.remasking = sdar::RemaskPolicy::LowConfidenceStatic;
  const std::vector<std::vector<std::int64_t>> prompt = {{1, 2, 3, 4, 5, 6}};
  const auto a = fused_gen.generate(prompt, config);
  config.fused_commit = false;
  const auto b = plain_gen.generate(prompt, config);
  CHECK(a.rows[0].tokens == b.rows[0].tokens);
  CHECK(a.rows[0].tokens.size() == 13 && a.rows[0].finish_reason == "length");
  const int committed = static_cast<int>(b.stats.steps_per_block.size()) - 1;
  CHECK(a.stats.nfe() == b.stats.nfe() - committed);
  CHECK(fused_engine->fused == committed);

  bool threw = false;
  try {
    config.max_new_tokens = 100;
    plain_gen.generate(prompt, config);
  } catch (const sdar::ContextOverflow& e) {
    threw = std::string(e.what()).find("max_context 64") != std::string::npos;
  }
  CHECK(threw);
  threw = false;
  try {
    config.max_new_tokens = 4;
    plain_gen.generate({{1, 99}}, config);
  } catch (const sdar::InvalidArgument&) {
    threw = true;
  }
  CHECK(threw);

  int cancelled_after = -1;
  config.max_new_tokens = 20;
  const auto c = plain_gen.generate(prompt, config, [&](int block, const std::vector<std::vector<std::int64_t>>&) {
    cancelled_after = block;
    return false;
  });
  CHECK(cancelled_after == 0 && c.rows[0].finish_reason == "cancelled" && c.rows[0].tokens.size() == 2);

  // Cache reuse: the second call starts from the committed prefix of the first; a step callback
  // sees every denoising step.
  auto reuse_engine = std::make_shared<ToyEngine>();
  sdar::Generator reuse_gen(toy_spec(), reuse_engine);
  config.max_new_tokens = 6;
  const auto first = reuse_gen.generate(prompt, config);
  std::vector<std::int64_t> history = prompt[0];
  history.insert(history.end(), first.rows[0].tokens.begin(), first.rows[0].tokens.end());
  history.push_back(7);
  CHECK(reuse_gen.cached_tokens(0).size() == 8);
  sdar::CallOptions options;
  options.reuse_cache = true;
  int steps_seen = 0;
  options.on_step = [&](const sdar::StepView& view) {
    ++steps_seen;
    return view.tokens->size() == 4 && view.masked->size() == 4;
  };
  const auto second = reuse_gen.generate({history}, config, options);
  const auto fresh = plain_gen.generate({history}, config);
  CHECK(second.stats.cached_tokens == 8 && second.stats.nfe_prefill == 1 && fresh.stats.nfe_prefill == 1);
  CHECK(second.rows[0].tokens == fresh.rows[0].tokens);
  int steps_total = 0;
  for (const int s : second.stats.steps_per_block) steps_total += s;
  CHECK(steps_seen == steps_total && steps_total > 0);
  // Cancellation is checked before every engine pass: a token set during pass k ends the call
  // before pass k + 1, with the tokens of the blocks finished so far.
  config.max_new_tokens = 40;
  plain_engine->calls = 0;
  const auto full = plain_gen.generate(prompt, config);
  const int full_calls = plain_engine->calls;
  CHECK(full.rows[0].finish_reason == "length");
  for (const int stop_at : {1, 2, 5, 9}) {
    sdar::CancelToken token;
    plain_engine->calls = 0;
    plain_engine->after_run_ = [&](int calls) {
      if (calls == stop_at) token.cancel();
    };
    sdar::Cancellation cancel;
    cancel.token = &token;
    const auto r = plain_gen.generate(prompt, config, {}, cancel);
    CHECK(plain_engine->calls == stop_at);
    CHECK(r.rows[0].finish_reason == "cancelled");
    const auto& t = r.rows[0].tokens;
    CHECK(t.size() < full.rows[0].tokens.size() && std::equal(t.begin(), t.end(), full.rows[0].tokens.begin()));
    CHECK(r.stats.nfe() == stop_at);
  }
  plain_engine->after_run_ = nullptr;
  // A cancelled token before the call: no engine pass at all.
  sdar::CancelToken cancelled;
  cancelled.cancel();
  plain_engine->calls = 0;
  sdar::Cancellation pre;
  pre.token = &cancelled;
  const auto none = plain_gen.generate(prompt, config, {}, pre);
  CHECK(plain_engine->calls == 0 && none.rows[0].finish_reason == "cancelled" && none.rows[0].tokens.empty());
  // A poll that throws (the bindings' Ctrl-C) aborts the call at once; the Generator stays usable.
  int polls = 0;
  sdar::Cancellation interrupt;
  interrupt.poll = [&] {
    if (++polls == 4) throw std::runtime_error("interrupted");
  };
  plain_engine->calls = 0;
  threw = false;
  try {
    plain_gen.generate(prompt, config, {}, interrupt);
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()) == "interrupted";
  }
  CHECK(threw && plain_engine->calls == 3);
  plain_engine->calls = 0;
  const auto again = plain_gen.generate(prompt, config);
  CHECK(again.rows[0].tokens == full.rows[0].tokens && plain_engine->calls == full_calls);

  // Sampling a step's positions over several threads changes no token: two rows, every policy,
  // greedy and sampled, against the same engine sampling on the calling thread.
  sdar::ModelSpec two_rows = toy_spec();
  two_rows.batch = 2;
  const std::vector<std::vector<std::int64_t>> two_prompts = {{1, 2, 3, 4, 5, 6}, {9, 8, 7, 6, 5, 4}};
  for (const auto policy : {sdar::RemaskPolicy::Sequential, sdar::RemaskPolicy::LowConfidenceStatic,
                            sdar::RemaskPolicy::LowConfidenceDynamic}) {
    for (const double temperature : {0.0, 1.5}) {
      auto serial_engine = std::make_shared<ToyEngine>();
      auto threaded_engine = std::make_shared<ToyEngine>();
      threaded_engine->threads = 3;
      sdar::Generator serial_gen(two_rows, serial_engine);
      sdar::Generator threaded_gen(two_rows, threaded_engine);
      sdar::GenerationConfig sampled;
      sampled.max_new_tokens = 12;
      sampled.remasking = policy;
      sampled.denoising_steps = 2;
      sampled.threshold = 0.3;
      sampled.temperature = temperature;
      sampled.seed = 5;
      const auto want = serial_gen.generate(two_prompts, sampled);
      const auto got = threaded_gen.generate(two_prompts, sampled);
      CHECK(got.rows[0].tokens == want.rows[0].tokens && got.rows[1].tokens == want.rows[1].tokens);
      CHECK(got.stats.steps_per_block == want.stats.steps_per_block);
      CHECK(threaded_engine->split_steps > 0);
    }
  }

  if (sdar::testing::failure_count() == 0) std::puts("sdar_runtime tests passed");
  return sdar::testing::failure_count() == 0 ? 0 : 1;
}
