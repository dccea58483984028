// trt/trt_rules.h on any machine (no TensorRT, no GPU): the past K/V a TensorRT step binds, when a
// captured decode graph may be replayed, and which TensorRT library can run which headers' code.
#include "trt/trt_rules.h"

#include <cstdio>

#include "check.h"

namespace {

using sdar::trt::rules::decode_launch;
using sdar::trt::rules::DecodeLaunch;
using sdar::trt::rules::library_runs_headers;
using sdar::trt::rules::past_binding;

bool binds(sdar::trt::rules::PastBinding b, std::int64_t rows, bool scratch) {
  return b.rows == rows && b.scratch == scratch;
}

}  // namespace

int main() {
  constexpr int L = 4;
  constexpr std::int64_t S = 1024;
  // Never zero rows, whatever the step and the bucketing.
  for (const bool writes_cache : {false, true}) {
    for (const std::int64_t bucket : {0, 1, 64, 256}) {
      for (std::int64_t past = 0; past + 2 * L <= S; past += L) {
        const auto b = past_binding(writes_cache, past, L, bucket, S);
        CHECK(b.rows > 0);
        CHECK(b.rows >= past);              // every row of the past is bound
        CHECK(b.rows <= S);
        if (writes_cache && past > 0) CHECK(binds(b, past, false));   // never overlaps the rows written
      }
    }
  }
  // A prefill / fused step at past 0 binds the engine's scratch rows (the cache's first rows are
  // the ones it writes); a decode step at past 0 binds masked cache rows.
  CHECK(binds(past_binding(true, 0, L, 256, S), L, true));
  CHECK(binds(past_binding(false, 0, L, 256, S), L, false));
  CHECK(binds(past_binding(false, 0, L, 0, S), L, false));
  // Decode buckets: rounded up to the bucket, capped by the profile, never below the past.
  CHECK(binds(past_binding(false, 4, L, 256, S), 256, false));
  CHECK(binds(past_binding(false, 256, L, 256, S), 256, false));
  CHECK(binds(past_binding(false, 260, L, 256, S), 512, false));
  CHECK(binds(past_binding(false, 1000, L, 256, S), 1024, false));
  CHECK(binds(past_binding(false, 1000, L, 0, S), 1000, false));

  // Bucket A -> B -> A: back at A the shapes were set again, so one plain enqueue, then replays.
  CHECK(decode_launch(false, true) == DecodeLaunch::EnqueueThenCapture);
  CHECK(decode_launch(true, true) == DecodeLaunch::Enqueue);
  CHECK(decode_launch(true, false) == DecodeLaunch::Replay);

  // TensorRT library versions (major * 10000 + minor * 100 + patch) against compiled headers.
  CHECK(library_runs_headers(100300, 10, 3));    // JetPack 6: 10.3 headers, 10.3 library
  CHECK(library_runs_headers(101400, 10, 3));    // a newer minor runs older headers' code
  CHECK(!library_runs_headers(100300, 10, 7));   // 10.7+ headers call IStreamReaderV2: not in 10.3
  CHECK(!library_runs_headers(110100, 10, 3));   // another major
  CHECK(!library_runs_headers(100314, 11, 1));

  // MemAvailable from /proc/meminfo's text (kB), -1 without it.
  using sdar::trt::rules::mem_available_bytes;
  CHECK(mem_available_bytes("MemTotal:        7990000 kB\nMemFree:          400000 kB\n"
                            "MemAvailable:    5120000 kB\nBuffers: 1 kB\n") == 5120000LL * 1024);
  CHECK(mem_available_bytes("MemTotal: 1 kB\nMemFree: 2 kB\n") == -1);
  CHECK(mem_available_bytes("MemAvailable: kB\n") == -1);

  if (sdar::testing::failure_count() == 0) std::puts("trt_rules tests passed");
  return sdar::testing::failure_count() == 0 ? 0 : 1;
}
