#include "trt_engine.h"

#include <NvInferRuntime.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "buffer.h"
#include "cuda/cuda_allocator.h"
#include "cuda/cuda_check.h"
#include "cuda/device_scalar.h"
#include "cuda/stream.h"
#include "errors.h"
#include "trt_compat.h"
#include "trt_logger.h"

namespace sdar::trt {

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw EngineError("cannot open TensorRT engine " + path +
                      "; build it on this device with: sdar-export ARTIFACT --engine trt");
  }
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

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

}  // namespace

std::string tensorrt_runtime_version() {
  const int v = getInferLibVersion();
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

// One graph kind: its engine, its execution context and what is currently set on the context.
struct GraphState {
  bool loaded = false;
  GraphKind kind = GraphKind::Decode;
  std::unique_ptr<nvinfer1::ICudaEngine> engine;         // declared before the context:
  std::unique_ptr<nvinfer1::IExecutionContext> context;  // destroyed after it
  std::int64_t max_past_rows = 0;  // the optimisation profile's limit on the past length
  std::int64_t bound_past_rows = -1;
  int bound_tokens = -1;
  std::int64_t bound_present_row = -1;  // -2: decode scratch
  std::map<std::int64_t, cuda::GraphExec> graphs;  // decode: one per past bucket
  bool graphs_failed = false;
};

struct TrtEngine::Impl {
  TrtEngineOptions options;
  Logger logger;                                  // outlives the runtime
  std::unique_ptr<nvinfer1::IRuntime> runtime;    // outlives the engines
  std::array<GraphState, 3> graphs;
  std::unique_ptr<cuda::Stream> own_stream;
  cudaStream_t stream = nullptr;
  std::shared_ptr<Allocator> allocator;
  Buffer past_len;         // int64 scalar the graphs read
  Buffer present_scratch;  // decode steps' K/V: [layers][K, V][L rows], never read back
  EngineBindings b;
  bool bound = false;
  bool synchronous = true;  // options.synchronous, off when a device loop shares the stream

  ~Impl() {
    // Nothing in flight on memory about to be freed. A stream adopted from the bindings may be
    // gone already; cudaFree synchronises the device anyway.
    if (own_stream) cudaStreamSynchronize(own_stream->get());
    cudaGetLastError();
  }

  GraphState& state(GraphKind kind) { return graphs[static_cast<std::size_t>(kind)]; }

  [[noreturn]] void fail(const std::string& what) {
    const std::string errors = logger.take_errors();
    throw EngineError(errors.empty() ? what : what + ": " + errors);
  }

  void load(const TrtEngineFile& file, const DeviceInfo& device, const std::string& version);
  void validate_io(GraphState& g) const;
  bool has_input(const GraphState& g, const std::string& name) const;
  void set_address(GraphState& g, const std::string& name, std::uintptr_t address);
  void set_shape(GraphState& g, const std::string& name, const nvinfer1::Dims& shape);
  void prepare(GraphState& g, std::int64_t past_rows, int tokens, std::int64_t present_row);
  void enqueue(GraphState& g);
  void launch_decode_graph(GraphState& g, std::int64_t past_rows);
};

void TrtEngine::Impl::load(const TrtEngineFile& file, const DeviceInfo& device, const std::string& version) {
  check_compatible(file, device, version);
  GraphState& g = state(file.graph);
  if (g.loaded) throw EngineError(std::string("two TensorRT engines given for the ") + graph_name(file.graph) + " graph");
  const std::vector<char> plan = read_file(file.path);
  g.engine.reset(runtime->deserializeCudaEngine(plan.data(), plan.size()));
  if (!g.engine) fail("TensorRT could not deserialise " + file.path);
  g.context.reset(g.engine->createExecutionContext());
  if (!g.context) fail("TensorRT could not create an execution context for " + file.path);
  g.kind = file.graph;
  g.loaded = true;
}

void TrtEngine::Impl::validate_io(GraphState& g) const {
  const nvinfer1::ICudaEngine& e = *g.engine;
  const std::string graph = graph_name(g.kind);
  using Mode = nvinfer1::TensorIOMode;
  std::set<std::string> known;
  // Inputs may be missing: TensorRT drops inputs nothing reads (prefill's last-layer past K/V,
  // manifest "unused_inputs"). Outputs must all be there.
  const auto expect = [&](const std::string& name, Mode mode, nvinfer1::DataType type) {
    known.insert(name);
    const Mode actual = e.getTensorIOMode(name.c_str());
    if (actual == Mode::kNONE && mode == Mode::kINPUT) return;
    if (actual != mode) {
      throw EngineError("the TensorRT " + graph + " engine has no " + (mode == Mode::kINPUT ? "input" : "output") +
                        " named '" + name + "' (CONTRACTS.md step graph I/O); re-export the artifact");
    }
    if (e.getTensorDataType(name.c_str()) != type) {
      throw EngineError("the TensorRT " + graph + " engine's '" + name + "' has another element type than the "
                        "artifact's manifest says; re-export the artifact");
    }
  };
  expect("input_ids", Mode::kINPUT, nvinfer1::DataType::kINT64);
  expect("past_len", Mode::kINPUT, nvinfer1::DataType::kINT64);
  const nvinfer1::DataType kv = trt_type(b.kv_dtype);
  for (int i = 0; i < b.num_layers; ++i) {
    expect(layer_name("past_key_", i), Mode::kINPUT, kv);
    expect(layer_name("past_value_", i), Mode::kINPUT, kv);
    expect(layer_name("present_key_", i), Mode::kOUTPUT, kv);
    expect(layer_name("present_value_", i), Mode::kOUTPUT, kv);
  }
  if (g.kind != GraphKind::Prefill) {
    expect("logits", Mode::kOUTPUT, nvinfer1::DataType::kFLOAT);
    const nvinfer1::Dims shape = e.getTensorShape("logits");
    if (shape.nbDims != 3 || (shape.d[0] >= 0 && shape.d[0] != b.batch) ||
        (shape.d[1] >= 0 && shape.d[1] != b.block_length) || (shape.d[2] >= 0 && shape.d[2] != b.vocab_size)) {
      throw EngineError("the TensorRT " + graph + " engine's logits shape does not match [batch " +
                        std::to_string(b.batch) + ", block " + std::to_string(b.block_length) + ", vocab " +
                        std::to_string(b.vocab_size) + "]; re-export the artifact");
    }
  }
  for (int i = 0; i < e.getNbIOTensors(); ++i) {
    const std::string name = e.getIOTensorName(i);
    if (known.count(name) == 0) {
      throw EngineError("the TensorRT " + graph + " engine has an unexpected tensor '" + name + "' for a " +
                        std::to_string(b.num_layers) + "-layer model; re-export the artifact");
    }
  }
  g.max_past_rows = b.max_context;
  for (int i = 0; i < b.num_layers; ++i) {  // the first past input TensorRT kept carries the profile
    const std::string name = layer_name("past_key_", i);
    if (e.getTensorIOMode(name.c_str()) != Mode::kINPUT) continue;
    const nvinfer1::Dims max = e.getProfileShape(name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
    if (max.nbDims == 4 && max.d[0] > 0) g.max_past_rows = std::min<std::int64_t>(max.d[0], b.max_context);
    break;
  }
}

// False for an input TensorRT dropped because nothing reads it.
bool TrtEngine::Impl::has_input(const GraphState& g, const std::string& name) const {
  return g.engine->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT;
}

void TrtEngine::Impl::set_address(GraphState& g, const std::string& name, std::uintptr_t address) {
  if (!g.context->setTensorAddress(name.c_str(), reinterpret_cast<void*>(address))) {
    fail(std::string("TensorRT rejected the address of '") + name + "' in the " + graph_name(g.kind) + " engine");
  }
}

void TrtEngine::Impl::set_shape(GraphState& g, const std::string& name, const nvinfer1::Dims& shape) {
  if (!g.context->setInputShape(name.c_str(), shape)) {
    std::string extents;
    for (int i = 0; i < shape.nbDims; ++i) extents += (i ? ", " : "") + std::to_string(shape.d[i]);
    fail(std::string("TensorRT rejected shape [") + extents + "] for '" + name + "' in the " + graph_name(g.kind) +
         " engine (outside its optimisation profile? re-export with a larger --max-context)");
  }
}

// Shapes and the present-output addresses of one run; only what changed is set again.
void TrtEngine::Impl::prepare(GraphState& g, std::int64_t past_rows, int tokens, std::int64_t present_row) {
  if (g.bound_tokens != tokens) {
    if (has_input(g, "input_ids")) set_shape(g, "input_ids", dims({b.batch, tokens}));
    g.bound_tokens = tokens;
  }
  if (g.bound_past_rows != past_rows) {
    const nvinfer1::Dims past = dims({past_rows, b.batch, b.num_kv_heads, b.head_dim});
    for (int i = 0; i < b.num_layers; ++i) {
      for (const char* prefix : {"past_key_", "past_value_"}) {
        const std::string name = layer_name(prefix, i);
        if (has_input(g, name)) set_shape(g, name, past);
      }
    }
    g.bound_past_rows = past_rows;
  }
  if (g.bound_present_row != present_row) {
    for (int i = 0; i < b.num_layers; ++i) {
      std::uintptr_t key = 0, value = 0;
      if (present_row == -2) {  // decode: scratch rows, identical for every step
        const std::size_t block_bytes = b.row_bytes * static_cast<std::size_t>(b.block_length);
        key = reinterpret_cast<std::uintptr_t>(present_scratch.data()) + (2 * i) * block_bytes;
        value = key + block_bytes;
      } else {  // straight into the cache slot [past_len, past_len + T)
        const std::size_t offset = b.row_bytes * static_cast<std::size_t>(present_row);
        key = b.key_cache[static_cast<std::size_t>(i)] + offset;
        value = b.value_cache[static_cast<std::size_t>(i)] + offset;
      }
      set_address(g, layer_name("present_key_", i), key);
      set_address(g, layer_name("present_value_", i), value);
    }
    g.bound_present_row = present_row;
  }
}

void TrtEngine::Impl::enqueue(GraphState& g) {
  if (!g.context->enqueueV3(stream)) fail(std::string("TensorRT enqueueV3 failed for the ") + graph_name(g.kind) + " engine");
  cuda::check_launch("TensorRT enqueueV3");
}

// Decode steps of one past bucket share one CUDA graph: every address is fixed (past = cache
// base, present = scratch, ids, logits, past_len scalar) and the past length is data.
void TrtEngine::Impl::launch_decode_graph(GraphState& g, std::int64_t past_rows) {
  const auto found = g.graphs.find(past_rows);
  if (found != g.graphs.end()) {
    SDAR_CUDA_CHECK(cudaGraphLaunch(found->second.get(), stream));
    return;
  }
  // First step of a bucket: a plain enqueue runs the step (and TensorRT's deferred setup for the
  // new shapes, which must not be captured); then the capture serves the later steps.
  enqueue(g);
  SDAR_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const bool enqueued = g.context->enqueueV3(stream);
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  const cuda::Graph owned(graph);
  cudaGraphExec_t exec = nullptr;
  if (enqueued && ended == cudaSuccess && graph != nullptr && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess) {
    g.graphs.emplace(past_rows, cuda::GraphExec(exec));
    return;
  }
  // Not capturable with this engine / TensorRT: stay on plain enqueues (correct, a bit slower).
  cudaGetLastError();
  logger.take_errors();
  g.graphs_failed = true;
}

TrtEngine::TrtEngine(const TrtEngineOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.options = options;
  if (options.past_bucket < 0) throw InvalidArgument("past_bucket must be >= 0");
  const DeviceInfo device = current_device();  // throws a clear DeviceError without a GPU
  const std::string version = tensorrt_runtime_version();
  if (getInferLibVersion() / 10000 != NV_TENSORRT_MAJOR) {
    throw EngineError("sdar_rt was compiled against TensorRT " + std::to_string(NV_TENSORRT_MAJOR) + ".x but TensorRT " +
                      version + " is loaded; rebuild sdar_rt against the installed TensorRT");
  }
  m.runtime.reset(nvinfer1::createInferRuntime(m.logger));
  if (!m.runtime) m.fail("TensorRT could not create a runtime");
  for (const TrtEngineFile& file : options.engines) m.load(file, device, version);
  for (const GraphKind kind : {GraphKind::Prefill, GraphKind::Decode}) {
    if (!m.state(kind).loaded) {
      throw EngineError(std::string("no TensorRT engine for the ") + graph_name(kind) +
                        " graph in the manifest; build them with: sdar-export ARTIFACT --engine trt");
    }
  }
  if (options.stream == nullptr) {
    m.own_stream = std::make_unique<cuda::Stream>();
    m.stream = m.own_stream->get();
  } else {
    m.stream = options.stream;
  }
  m.allocator = std::make_shared<cuda::CudaAllocator>();
  m.past_len = Buffer(m.allocator, sizeof(std::int64_t), 256);
}

TrtEngine::~TrtEngine() = default;

cudaStream_t TrtEngine::stream() const { return impl_->stream; }

bool TrtEngine::has_graph(GraphKind kind) const { return impl_->graphs[static_cast<std::size_t>(kind)].loaded; }

int TrtEngine::captured_graphs() const {
  int count = 0;
  for (const GraphState& g : impl_->graphs) count += static_cast<int>(g.graphs.size());
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
  for (GraphState& g : m.graphs) {
    if (!g.loaded) continue;
    m.validate_io(g);
    if (m.has_input(g, "input_ids")) m.set_address(g, "input_ids", bindings.input_ids);
    if (m.has_input(g, "past_len")) m.set_address(g, "past_len", reinterpret_cast<std::uintptr_t>(m.past_len.data()));
    if (g.kind != GraphKind::Prefill) m.set_address(g, "logits", bindings.logits);
    for (int i = 0; i < bindings.num_layers; ++i) {  // past = the cache prefix, bound in place
      const std::string key = layer_name("past_key_", i), value = layer_name("past_value_", i);
      if (m.has_input(g, key)) m.set_address(g, key, bindings.key_cache[static_cast<std::size_t>(i)]);
      if (m.has_input(g, value)) m.set_address(g, value, bindings.value_cache[static_cast<std::size_t>(i)]);
    }
    g.bound_past_rows = -1;
    g.bound_tokens = -1;
    g.bound_present_row = -1;
    g.graphs.clear();  // addresses changed: old captures are stale
  }
  m.bound = true;
}

void TrtEngine::run(GraphKind kind, std::int64_t past_len, int tokens) {
  Impl& m = *impl_;
  if (!m.bound) throw EngineError("TrtEngine::run before bind");
  GraphState& g = m.state(kind);
  if (!g.loaded) {
    throw EngineError(std::string("the artifact has no TensorRT engine for the ") + graph_name(kind) +
                      " graph" + (kind == GraphKind::Fused ? "; use fused_commit=False or re-export" : ""));
  }
  const int L = m.b.block_length;
  const bool tokens_ok = kind == GraphKind::Decode  ? tokens == L
                         : kind == GraphKind::Fused ? tokens == 2 * L
                                                    : tokens > 0 && tokens % L == 0;
  if (!tokens_ok || tokens > m.b.ids_capacity) {
    throw EngineError(std::string("invalid token count ") + std::to_string(tokens) + " for the " + graph_name(kind) +
                      " engine");
  }
  if (past_len < 0 || past_len % L != 0 || past_len + tokens > m.b.max_context) {
    throw EngineError("invalid past length " + std::to_string(past_len) + " for a run over " + std::to_string(tokens) +
                      " tokens (block " + std::to_string(L) + ", max_context " + std::to_string(m.b.max_context) + ")");
  }
  if (past_len > g.max_past_rows) {
    throw EngineError("past length " + std::to_string(past_len) + " exceeds the TensorRT " + graph_name(kind) +
                      " engine's profile maximum " + std::to_string(g.max_past_rows) +
                      "; rebuild the engines with: sdar-export ARTIFACT --engine trt");
  }
  cuda::write_int64(m.past_len.as<std::int64_t>(), past_len, m.stream);

  if (kind == GraphKind::Decode) {
    // Round the bound past up to a bucket (valid memory: the cache is preallocated; the graph
    // masks rows >= past_len), and write the scratch K/V of the denoising step aside.
    std::int64_t rows = past_len;
    if (m.options.past_bucket > 0) {
      const std::int64_t bucket = m.options.past_bucket;
      rows = std::max(past_len, std::min((past_len + bucket - 1) / bucket * bucket, g.max_past_rows));
    }
    m.prepare(g, rows, tokens, -2);
    if (m.options.cuda_graphs && m.options.past_bucket > 0 && !g.graphs_failed) {
      m.launch_decode_graph(g, rows);
    } else {
      m.enqueue(g);
    }
  } else {
    // Prefill / fused write K/V that must land in the cache: present = the slot after the prefix;
    // the past is bound at its exact length so it never overlaps the slot being written.
    m.prepare(g, past_len, tokens, past_len);
    m.enqueue(g);
  }
  if (m.synchronous) SDAR_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

}  // namespace sdar::trt
