#include "trt_engine.h"

#include <NvInferRuntime.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <map>
#include <sstream>
#include <set>
#include <string>
#include <utility>

#include "buffer.h"
#include "cuda/cuda_allocator.h"
#include "cuda/cuda_check.h"
#include "cuda/device_scalar.h"
#include "cuda/stream.h"
#include "errors.h"
#include "plan_reader.h"
#include "trt_compat.h"
#include "trt_logger.h"
#include "trt_rules.h"

// The V2 device-memory API (int64 sizes, per-profile sizes) is what this engine uses: 10.1+.
#if NV_TENSORRT_MAJOR < 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR < 1)
#error "the TensorRT backend needs TensorRT 10.1 or newer (JetPack 6.1+ ships 10.3)"
#endif

namespace sdar::trt {

namespace {

constexpr std::array<GraphKind, 3> kKinds = {GraphKind::Prefill, GraphKind::Decode, GraphKind::Fused};

nvinfer1::DataType trt_type(DType dtype) {
  switch (dtype) {
    case DType::Float32: return nvinfer1::DataType::kFLOAT;
    case DType::Float16: return nvinfer1::DataType::kHALF;
    case DType::BFloat16: return nvinfer1::DataType::kBF16;
  }
  return nvinfer1::DataType::kFLOAT;
}

nvinfer1::Dims dims(std::initializer_list<std::int64_t> extents) {
  nvinfer1::Dims d{};
  d.nbDims = static_cast<std::int32_t>(extents.size());
  int i = 0;
  for (const std::int64_t e : extents) d.d[i++] = e;
  return d;
}

std::string layer_name(const char* prefix, int layer) { return prefix + std::to_string(layer); }

constexpr const char* kRebuild = "rebuild the plan on this device with: sdar-export ARTIFACT --engine trt";

}  // namespace

std::string tensorrt_runtime_version() {
  const int v = getInferLibVersion();
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

// One step kind: its profile, its execution context and what is currently set on the context.
struct KindState {
  GraphKind kind = GraphKind::Decode;
  int profile = -1;  // -1: the plan has no profile for this kind
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  int min_tokens = 0, max_tokens = 0;  // the profile's range of input_ids' token axis
  std::int64_t max_past_rows = 0;       // the profile's limit on the bound past length
  std::int64_t bound_past_rows = -1;
  int bound_past_source = -1;            // 0: the cache, 1: the scratch rows (rules::PastBinding)
  int bound_tokens = -1;
  bool shapes_set_since_enqueue = true;  // rules::decode_launch
  std::int64_t bound_present_row = -1;  // -2: decode scratch
  // Captured steps, keyed by the shapes they were captured with: (token count, bound past rows).
  std::map<std::pair<int, std::int64_t>, cuda::GraphExec> graphs;
  bool graphs_failed = false;
};

struct TrtEngine::Impl {
  TrtEngineOptions options;
  Logger logger;                                   // outlives the runtime
  std::unique_ptr<nvinfer1::IRuntime> runtime;     // outlives the engine
  std::unique_ptr<nvinfer1::ICudaEngine> engine;   // outlives the contexts
  std::shared_ptr<Allocator> allocator;
  Buffer scratch;          // every context's device memory (one step runs at a time); outlives them
  std::array<KindState, 3> kinds;
  std::unique_ptr<cuda::Stream> own_stream;
  cudaStream_t stream = nullptr;
  Buffer past_len;         // int64 scalar the plan reads
  Buffer present_scratch;  // decode steps' K/V: [layers][K, V][L rows], never read back
  EngineBindings b;
  bool bound = false;
  bool synchronous = true;  // options.synchronous, off when a device loop shares the stream
  bool integrated = false;  // the GPU shares the board's RAM

  ~Impl() {
    // Nothing in flight on memory about to be freed. A stream adopted from the bindings may be
    // gone already; cudaFree synchronises the device anyway.
    if (own_stream) cudaStreamSynchronize(own_stream->get());
    cudaGetLastError();
  }

  KindState& state(GraphKind kind) { return kinds[static_cast<std::size_t>(kind)]; }

  [[noreturn]] void fail(const std::string& what) {
    const std::string errors = logger.take_errors();
    throw EngineError(errors.empty() ? what : what + ": " + errors);
  }

  void create_contexts();
  void validate_io() const;
  void read_profile(KindState& k) const;
  bool has_input(const std::string& name) const;
  void set_address(KindState& k, const std::string& name, std::uintptr_t address);
  void set_shape(KindState& k, const std::string& name, const nvinfer1::Dims& shape);
  std::uintptr_t scratch_rows(int layer, bool value) const;
  void bind_past(KindState& k, bool scratch);
  void prepare(KindState& k, const rules::PastBinding& past, int tokens, std::int64_t present_row);
  void enqueue(KindState& k);
  void launch_captured(KindState& k, int tokens, std::int64_t past_rows);
};

// One context per profile, all on one user-managed scratch allocation of the largest profile's
// size, allocated once; the profile is selected once per context, here.
void TrtEngine::Impl::create_contexts() {
  std::int64_t need = 0;
  for (const KindState& k : kinds) {
    if (k.profile >= 0) need = std::max(need, engine->getDeviceMemorySizeForProfileV2(k.profile));
  }
  std::size_t free_bytes = 0, total_bytes = 0;
  SDAR_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (integrated) {  // the board's RAM: what the OS says is available, page cache included
    std::ifstream meminfo("/proc/meminfo");
    std::ostringstream text;
    text << meminfo.rdbuf();
    const std::int64_t available = rules::mem_available_bytes(text.str());
    if (available > 0) free_bytes = std::max(free_bytes, static_cast<std::size_t>(available));
  }
  if (static_cast<std::size_t>(need) > free_bytes) {
    throw EngineError("the TensorRT plan needs " + std::to_string(need >> 20) + " MiB of scratch memory but the GPU has " +
                      std::to_string(free_bytes >> 20) + " MiB " + (integrated ? "available" : "free") +
                      "; re-export with a smaller --max-context or --int4, or close other GPU users");
  }
  scratch = Buffer(allocator, static_cast<std::size_t>(std::max<std::int64_t>(need, 1)), 256);
  for (KindState& k : kinds) {
    if (k.profile < 0) continue;
    k.context.reset(engine->createExecutionContext(nvinfer1::ExecutionContextAllocationStrategy::kUSER_MANAGED));
    if (!k.context) fail(std::string("TensorRT could not create an execution context for the ") + graph_name(k.kind) + " profile");
    k.context->setDeviceMemoryV2(scratch.data(), need);
    if (!k.context->setOptimizationProfileAsync(k.profile, stream)) {
      fail(std::string("TensorRT rejected optimization profile ") + std::to_string(k.profile) + " for the " +
           graph_name(k.kind) + " steps; " + kRebuild);
    }
  }
  SDAR_CUDA_CHECK(cudaStreamSynchronize(stream));
}

// The profile's token range (input_ids [B, T]) and past-row limit (past_key_0 [P, B, KVH, D]).
void TrtEngine::Impl::read_profile(KindState& k) const {
  using Sel = nvinfer1::OptProfileSelector;
  const nvinfer1::Dims lo = engine->getProfileShape("input_ids", k.profile, Sel::kMIN);
  const nvinfer1::Dims hi = engine->getProfileShape("input_ids", k.profile, Sel::kMAX);
  if (lo.nbDims != 2 || hi.nbDims != 2) {
    throw EngineError(std::string("the TensorRT plan's ") + graph_name(k.kind) + " profile has no [batch, tokens] "
                      "input_ids; " + kRebuild);
  }
  k.min_tokens = static_cast<int>(lo.d[1]);
  k.max_tokens = static_cast<int>(hi.d[1]);
  k.max_past_rows = b.max_context;
  const nvinfer1::Dims past = engine->getProfileShape("past_key_0", k.profile, Sel::kMAX);
  if (past.nbDims == 4 && past.d[0] > 0) k.max_past_rows = std::min<std::int64_t>(past.d[0], b.max_context);
}

void TrtEngine::Impl::validate_io() const {
  const nvinfer1::ICudaEngine& e = *engine;
  using Mode = nvinfer1::TensorIOMode;
  std::set<std::string> known;
  const auto expect = [&](const std::string& name, Mode mode, nvinfer1::DataType type) {
    known.insert(name);
    if (e.getTensorIOMode(name.c_str()) != mode) {
      throw EngineError(std::string("the TensorRT plan has no ") + (mode == Mode::kINPUT ? "input" : "output") +
                        " named '" + name + "' (CONTRACTS.md step graph I/O); re-export the artifact");
    }
    if (e.getTensorDataType(name.c_str()) != type) {
      throw EngineError("the TensorRT plan's '" + name + "' has another element type than the artifact's manifest "
                        "says; re-export the artifact");
    }
  };
  expect("input_ids", Mode::kINPUT, nvinfer1::DataType::kINT64);
  expect("past_len", Mode::kINPUT, nvinfer1::DataType::kINT64);
  expect("logits", Mode::kOUTPUT, nvinfer1::DataType::kFLOAT);
  const nvinfer1::DataType kv = trt_type(b.kv_dtype);
  for (int i = 0; i < b.num_layers; ++i) {
    expect(layer_name("past_key_", i), Mode::kINPUT, kv);
    expect(layer_name("past_value_", i), Mode::kINPUT, kv);
    expect(layer_name("present_key_", i), Mode::kOUTPUT, kv);
    expect(layer_name("present_value_", i), Mode::kOUTPUT, kv);
  }
  const nvinfer1::Dims shape = e.getTensorShape("logits");
  if (shape.nbDims != 3 || (shape.d[0] >= 0 && shape.d[0] != b.batch) ||
      (shape.d[1] >= 0 && shape.d[1] != b.block_length) || (shape.d[2] >= 0 && shape.d[2] != b.vocab_size)) {
    throw EngineError("the TensorRT plan's logits shape does not match [batch " + std::to_string(b.batch) +
                      ", block " + std::to_string(b.block_length) + ", vocab " + std::to_string(b.vocab_size) +
                      "]; re-export the artifact");
  }
  for (int i = 0; i < e.getNbIOTensors(); ++i) {
    const std::string name = e.getIOTensorName(i);
    if (known.count(name) == 0) {
      throw EngineError("the TensorRT plan has an unexpected tensor '" + name + "' for a " +
                        std::to_string(b.num_layers) + "-layer model; re-export the artifact");
    }
  }
}

bool TrtEngine::Impl::has_input(const std::string& name) const {
  return engine->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT;
}

void TrtEngine::Impl::set_address(KindState& k, const std::string& name, std::uintptr_t address) {
  if (!k.context->setTensorAddress(name.c_str(), reinterpret_cast<void*>(address))) {
    fail(std::string("TensorRT rejected the address of '") + name + "' for the " + graph_name(k.kind) + " steps");
  }
}

void TrtEngine::Impl::set_shape(KindState& k, const std::string& name, const nvinfer1::Dims& shape) {
  if (!k.context->setInputShape(name.c_str(), shape)) {
    std::string extents;
    for (int i = 0; i < shape.nbDims; ++i) extents += (i ? ", " : "") + std::to_string(shape.d[i]);
    // run() checked the token count and the past length against the profile first, so this is
    // a plan that does not match the artifact.
    fail(std::string("TensorRT rejected shape [") + extents + "] for '" + name + "' in the " + graph_name(k.kind) +
         " profile; " + kRebuild);
  }
}

// Layer `layer`'s L scratch rows of K (or V): decode steps write their K/V there, and a step at
// past 0 that writes the cache reads them as its (masked) past. Zeroed at allocation.
std::uintptr_t TrtEngine::Impl::scratch_rows(int layer, bool value) const {
  const std::size_t block_bytes = b.row_bytes * static_cast<std::size_t>(b.block_length);
  return reinterpret_cast<std::uintptr_t>(present_scratch.data()) +
         (2 * static_cast<std::size_t>(layer) + (value ? 1 : 0)) * block_bytes;
}

// Past K/V from the cache base (the cache prefix, in place) or from the scratch rows.
void TrtEngine::Impl::bind_past(KindState& k, bool scratch) {
  for (int i = 0; i < b.num_layers; ++i) {
    const auto layer = static_cast<std::size_t>(i);
    set_address(k, layer_name("past_key_", i), scratch ? scratch_rows(i, false) : b.key_cache[layer]);
    set_address(k, layer_name("past_value_", i), scratch ? scratch_rows(i, true) : b.value_cache[layer]);
  }
  k.bound_past_source = scratch ? 1 : 0;
}

// Shapes and addresses of one run; only what changed is set again.
void TrtEngine::Impl::prepare(KindState& k, const rules::PastBinding& past, int tokens, std::int64_t present_row) {
  if (k.bound_tokens != tokens) {
    set_shape(k, "input_ids", dims({b.batch, tokens}));
    k.bound_tokens = tokens;
    k.shapes_set_since_enqueue = true;
  }
  if (k.bound_past_rows != past.rows) {
    const nvinfer1::Dims shape = dims({past.rows, b.batch, b.num_kv_heads, b.head_dim});
    for (int i = 0; i < b.num_layers; ++i) {
      set_shape(k, layer_name("past_key_", i), shape);
      set_shape(k, layer_name("past_value_", i), shape);
    }
    k.bound_past_rows = past.rows;
    k.shapes_set_since_enqueue = true;
  }
  if (k.bound_past_source != (past.scratch ? 1 : 0)) bind_past(k, past.scratch);
  if (k.bound_present_row != present_row) {
    for (int i = 0; i < b.num_layers; ++i) {
      std::uintptr_t key = 0, value = 0;
      if (present_row == -2) {  // decode: scratch rows, identical for every step
        key = scratch_rows(i, false);
        value = scratch_rows(i, true);
      } else {  // straight into the cache slot [past_len, past_len + T)
        const std::size_t offset = b.row_bytes * static_cast<std::size_t>(present_row);
        key = b.key_cache[static_cast<std::size_t>(i)] + offset;
        value = b.value_cache[static_cast<std::size_t>(i)] + offset;
      }
      set_address(k, layer_name("present_key_", i), key);
      set_address(k, layer_name("present_value_", i), value);
    }
    k.bound_present_row = present_row;
  }
}

void TrtEngine::Impl::enqueue(KindState& k) {
  if (!k.context->enqueueV3(stream)) fail(std::string("TensorRT enqueueV3 failed for the ") + graph_name(k.kind) + " steps");
  cuda::check_launch("TensorRT enqueueV3");
  k.shapes_set_since_enqueue = false;
}

// Decode steps of one (token count, past bucket) share one CUDA graph: every address is fixed
// (past = cache base, present = scratch, ids, logits, past_len scalar) and the past length is
// data. The key is exactly the shapes the capture ran with, so a graph never replays another
// shape's work; and after the context's shapes were set again (a bucket A -> B -> A sequence) one
// plain enqueue runs TensorRT's deferred setup for them before the graph is replayed.
void TrtEngine::Impl::launch_captured(KindState& k, int tokens, std::int64_t past_rows) {
  const std::pair<int, std::int64_t> key{tokens, past_rows};
  const auto found = k.graphs.find(key);
  switch (rules::decode_launch(found != k.graphs.end(), k.shapes_set_since_enqueue)) {
    case rules::DecodeLaunch::Replay:
      SDAR_CUDA_CHECK(cudaGraphLaunch(found->second.get(), stream));
      return;
    case rules::DecodeLaunch::Enqueue:
      enqueue(k);
      return;
    case rules::DecodeLaunch::EnqueueThenCapture:
      break;
  }
  // First step of these shapes: a plain enqueue runs it (and TensorRT's deferred setup for the
  // new shapes, which must not be captured), then the stream is drained so the capture starts
  // from a quiet stream and records only the step itself.
  enqueue(k);
  SDAR_CUDA_CHECK(cudaStreamSynchronize(stream));
  SDAR_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const bool enqueued = k.context->enqueueV3(stream);
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  const cuda::Graph owned(graph);
  cudaGraphExec_t exec = nullptr;
  if (enqueued && ended == cudaSuccess && graph != nullptr && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess) {
    k.graphs.emplace(key, cuda::GraphExec(exec));
    return;
  }
  // Not capturable with this plan / TensorRT: stay on plain enqueues (correct, a bit slower).
  cudaGetLastError();
  logger.take_errors();
  k.graphs_failed = true;
}

TrtEngine::TrtEngine(const TrtEngineOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.options = options;
  if (options.past_bucket < 0) throw InvalidArgument("past_bucket must be >= 0");
  const DeviceInfo device = current_device();  // throws a clear DeviceError without a GPU
  const std::string version = tensorrt_runtime_version();
  if (!rules::library_runs_headers(getInferLibVersion(), NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR)) {
    throw EngineError("sdar_rt was compiled against TensorRT " + std::to_string(NV_TENSORRT_MAJOR) + "." +
                      std::to_string(NV_TENSORRT_MINOR) + " but TensorRT " + version +
                      " is loaded (it needs the same major version and at least that minor one); rebuild sdar_rt "
                      "against the installed TensorRT");
  }
  check_compatible(options.plan, device, version);
  m.integrated = device.integrated;
  for (std::size_t i = 0; i < kKinds.size(); ++i) {
    m.kinds[i].kind = kKinds[i];
    m.kinds[i].profile = options.plan.profiles[i];
  }
  for (const GraphKind kind : {GraphKind::Prefill, GraphKind::Decode}) {
    if (m.state(kind).profile < 0) {
      throw EngineError(std::string("the TensorRT plan has no ") + graph_name(kind) + " profile; " + kRebuild);
    }
  }
  if (options.stream == nullptr) {
    m.own_stream = std::make_unique<cuda::Stream>();
    m.stream = m.own_stream->get();
  } else {
    m.stream = options.stream;
  }
  m.runtime.reset(nvinfer1::createInferRuntime(m.logger));
  if (!m.runtime) m.fail("TensorRT could not create a runtime");
  m.engine = load_plan(*m.runtime, options.plan.path);
  if (!m.engine) m.fail("TensorRT could not deserialise " + options.plan.path);
  const int profiles = m.engine->getNbOptimizationProfiles();
  for (const KindState& k : m.kinds) {
    if (k.profile >= profiles) {
      throw EngineError("the manifest names optimization profile " + std::to_string(k.profile) + " for the " +
                        graph_name(k.kind) + " steps but the plan has " + std::to_string(profiles) + "; " + kRebuild);
    }
  }
  m.allocator = std::make_shared<cuda::CudaAllocator>();
  m.create_contexts();
  m.past_len = Buffer(m.allocator, sizeof(std::int64_t), 256);
}

TrtEngine::~TrtEngine() = default;

cudaStream_t TrtEngine::stream() const { return impl_->stream; }

bool TrtEngine::has_graph(GraphKind kind) const { return impl_->kinds[static_cast<std::size_t>(kind)].profile >= 0; }

int TrtEngine::max_prefill_tokens() const {
  const Impl& m = *impl_;
  using Sel = nvinfer1::OptProfileSelector;
  const nvinfer1::Dims hi = m.engine->getProfileShape("input_ids", m.kinds[0].profile, Sel::kMAX);
  return hi.nbDims == 2 ? static_cast<int>(hi.d[1]) : 0;
}

std::int64_t TrtEngine::scratch_bytes() const { return static_cast<std::int64_t>(impl_->scratch.size()); }

int TrtEngine::captured_graphs() const {
  int count = 0;
  for (const KindState& k : impl_->kinds) count += static_cast<int>(k.graphs.size());
  return count;
}

void TrtEngine::bind(const EngineBindings& bindings) {
  Impl& m = *impl_;
  if (!bindings.device_memory) {
    throw EngineError("the TensorRT engine needs the KV cache and step buffers in device memory: create the "
                      "Generator with sdar::cuda::cuda_allocator()");
  }
  if (static_cast<int>(bindings.key_cache.size()) != bindings.num_layers ||
      static_cast<int>(bindings.value_cache.size()) != bindings.num_layers) {
    throw EngineError("engine bindings: one K and one V cache buffer per layer expected");
  }
  m.b = bindings;
  // The GPU decoding loop's stream: enqueue there, so its unmasking kernel follows each pass
  // without a host sync.
  if (bindings.stream != 0) m.stream = reinterpret_cast<cudaStream_t>(bindings.stream);
  m.synchronous = m.options.synchronous && bindings.stream == 0;
  m.present_scratch = Buffer(m.allocator, 2 * static_cast<std::size_t>(bindings.num_layers) *
                                              static_cast<std::size_t>(bindings.block_length) * bindings.row_bytes,
                             256);
  m.validate_io();
  for (KindState& k : m.kinds) {
    if (k.profile < 0) continue;
    m.read_profile(k);
    m.set_address(k, "input_ids", bindings.input_ids);
    m.set_address(k, "past_len", reinterpret_cast<std::uintptr_t>(m.past_len.data()));
    // Every kind writes the logits of its last L positions; a prefill's are overwritten by the
    // decode step that follows before anything reads them.
    m.set_address(k, "logits", bindings.logits);
    m.bind_past(k, false);  // past = the cache prefix, bound in place
    k.bound_past_rows = -1;
    k.bound_tokens = -1;
    k.bound_present_row = -1;
    k.shapes_set_since_enqueue = true;
    k.graphs.clear();  // addresses changed: old captures are stale
  }
  m.bound = true;
}

void TrtEngine::run(GraphKind kind, std::int64_t past_len, int tokens) {
  Impl& m = *impl_;
  if (!m.bound) throw EngineError("TrtEngine::run before bind");
  KindState& k = m.state(kind);
  if (k.profile < 0) {
    throw EngineError(std::string("the TensorRT plan has no ") + graph_name(kind) + " profile" +
                      (kind == GraphKind::Fused ? "; use fused_commit=False or rebuild the plan" : ""));
  }
  const int L = m.b.block_length;
  const bool tokens_ok = kind == GraphKind::Decode  ? tokens == L
                         : kind == GraphKind::Fused ? tokens == 2 * L
                                                    : tokens > 0 && tokens % L == 0;
  if (!tokens_ok || tokens > m.b.ids_capacity) {
    throw EngineError(std::string("invalid token count ") + std::to_string(tokens) + " for a " + graph_name(kind) +
                      " step");
  }
  if (tokens < k.min_tokens || tokens > k.max_tokens) {
    if (kind == GraphKind::Prefill) {
      throw EngineError("a prefill pass of " + std::to_string(tokens) + " tokens is outside the TensorRT plan's prefill "
                        "profile [" + std::to_string(k.min_tokens) + ", " + std::to_string(k.max_tokens) +
                        "] (the --prefill-chunk it was built with): create the Generator with prefill_chunk=" +
                        std::to_string(k.max_tokens) + " or less, or rebuild the plan with: sdar-export ARTIFACT "
                        "--engine trt --prefill-chunk " + std::to_string(tokens));
    }
    throw EngineError(std::string("the TensorRT plan's ") + graph_name(kind) + " profile takes " +
                      std::to_string(k.min_tokens) + ".." + std::to_string(k.max_tokens) + " tokens, not " +
                      std::to_string(tokens) + "; " + kRebuild);
  }
  if (past_len < 0 || past_len % L != 0 || past_len + tokens > m.b.max_context) {
    throw EngineError("invalid past length " + std::to_string(past_len) + " for a run over " + std::to_string(tokens) +
                      " tokens (block " + std::to_string(L) + ", max_context " + std::to_string(m.b.max_context) + ")");
  }
  if (past_len > k.max_past_rows) {
    throw EngineError("past length " + std::to_string(past_len) + " exceeds the TensorRT plan's " + graph_name(kind) +
                      " profile maximum " + std::to_string(k.max_past_rows) + " (it was built for a smaller "
                      "--max-context than the artifact's); " + kRebuild);
  }
  cuda::write_int64(m.past_len.as<std::int64_t>(), past_len, m.stream);

  // Decode: the bound past is rounded up to a bucket (valid memory: the cache is preallocated; the
  // graph masks rows >= past_len), and the denoising step's K/V go to scratch. Prefill / fused:
  // their K/V land in the cache right after the prefix, bound at its exact length so it never
  // overlaps the slot being written. Never zero past rows (rules::past_binding).
  const bool writes_cache = kind != GraphKind::Decode;
  const rules::PastBinding past = rules::past_binding(writes_cache, past_len, L, m.options.past_bucket, k.max_past_rows);
  if (!writes_cache) {
    m.prepare(k, past, tokens, -2);
    if (m.options.cuda_graphs && m.options.past_bucket > 0 && !k.graphs_failed) {
      m.launch_captured(k, tokens, past.rows);
    } else {
      m.enqueue(k);
    }
  } else {
    m.prepare(k, past, tokens, past_len);
    m.enqueue(k);
  }
  if (m.synchronous) SDAR_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

}  // namespace sdar::trt
