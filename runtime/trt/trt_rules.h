// The TensorRT engine's decisions that need neither TensorRT nor a GPU, as plain functions, so the
// C++ tests check them on any machine (ctest -R sdar_trt_rules): which past K/V a step binds,
// whether a captured CUDA graph may be replayed, and whether the loaded TensorRT library can run
// code compiled against a given TensorRT's headers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

namespace sdar::trt::rules {

// The past K/V one step binds: `rows` rows from the KV cache's base, or from the engine's own
// zeroed scratch rows when `scratch` is set. The graph masks every row >= past_len, so rows
// beyond the past are never read into a result.
struct PastBinding {
  std::int64_t rows = 0;
  bool scratch = false;
};

// Never zero rows: TensorRT does not document empty tensors through its fused attention, so a
// step at past_len 0 binds `block_length` masked rows instead.
//   decode (writes its K/V to scratch): the cache prefix, rounded up to a multiple of
//     `past_bucket` (one captured graph per bucket; 0: the exact length), at most the profile's
//     `max_rows`, at least block_length rows;
//   prefill / fused (`writes_cache`: their K/V land in the cache right after the past): exactly
//     past_len rows, so the past never overlaps the rows being written; at past_len 0 the
//     engine's scratch rows (the cache's first rows are being written by this very step).
inline PastBinding past_binding(bool writes_cache, std::int64_t past_len, int block_length, std::int64_t past_bucket,
                                std::int64_t max_rows) {
  const std::int64_t least = std::min<std::int64_t>(block_length, max_rows);
  if (writes_cache) {
    if (past_len > 0) return {past_len, false};
    return {least, true};
  }
  std::int64_t rows = past_len;
  if (past_bucket > 0) rows = std::max(past_len, std::min((past_len + past_bucket - 1) / past_bucket * past_bucket, max_rows));
  return {std::max(rows, least), false};
}

// How a decode step is launched when CUDA graphs are on.
enum class DecodeLaunch {
  Replay,              // the graph captured for these shapes
  Enqueue,             // a plain enqueueV3 (TensorRT's setup for shapes just set again runs there)
  EnqueueThenCapture,  // first step of these shapes: a plain enqueue, then the capture
};

// `have_graph`: a graph was captured for the shapes now bound; `shapes_set_since_enqueue`: the
// context's input shapes were set (to another bucket and back) after its last enqueueV3. TensorRT
// defers the work of a shape change to the next enqueueV3, which a replayed graph does not call:
// so after a shape change one plain enqueue runs first, and only then is the graph replayed.
inline DecodeLaunch decode_launch(bool have_graph, bool shapes_set_since_enqueue) {
  if (!have_graph) return DecodeLaunch::EnqueueThenCapture;
  return shapes_set_since_enqueue ? DecodeLaunch::Enqueue : DecodeLaunch::Replay;
}

// Whether the TensorRT library loaded at run time (getInferLibVersion(): major * 10000 + minor * 100
// + patch) can run code compiled against headers `compiled_major`.`compiled_minor`: the same major
// version and at least that minor one (a newer minor keeps the older ones' functions; an older one
// lacks what newer headers call, e.g. IStreamReaderV2 from 10.7).
inline bool library_runs_headers(int library_version, int compiled_major, int compiled_minor) {
  const int major = library_version / 10000;
  const int minor = library_version / 100 % 100;
  return major == compiled_major && minor >= compiled_minor;
}

// Bytes of `MemAvailable:` in the text of /proc/meminfo ("MemAvailable:  123456 kB"), -1 when it
// is not there. On an integrated GPU (Jetson) device memory is the board's RAM, and this (free RAM
// plus the page cache the kernel can reclaim) is what an allocation can get; cudaMemGetInfo's free
// figure leaves the page cache out and would refuse a model that fits.
inline std::int64_t mem_available_bytes(const std::string& meminfo) {
  const std::string key = "MemAvailable:";
  const std::size_t at = meminfo.find(key);
  if (at == std::string::npos) return -1;
  std::size_t i = at + key.size();
  while (i < meminfo.size() && meminfo[i] == ' ') ++i;
  std::int64_t kib = 0;
  bool digits = false;
  for (; i < meminfo.size() && meminfo[i] >= '0' && meminfo[i] <= '9'; ++i) {
    kib = kib * 10 + (meminfo[i] - '0');
    digits = true;
  }
  return digits ? kib * 1024 : -1;
}

}  // namespace sdar::trt::rules
