// pybind11 bindings of the generation core: module sdar_rt._core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "build_config.h"
#include "cancellation.h"
#include "cpu/bindings_cpu.h"  // the native CPU engine and its kernels
#include "errors.h"
#include "generator.h"
#include "host_backend.h"
#include "philox.h"
#include "py_values.h"
#include "remask.h"
#include "sampler.h"
#include "step_callback.h"
#include "synthetic_engine.h"

#ifdef SDAR_HAVE_CUDA
#include "cuda/bindings_cuda.h"  // GPU kernels for tests and benchmarks
#include "cuda/device_backend.h"
#endif
#ifdef SDAR_HAVE_TENSORRT
#include "trt/bindings_trt.h"
#endif

namespace py = pybind11;
using namespace sdar;

namespace {

// Lets a Python class implement Engine. pybind11 reacquires the GIL for the override; an exception
// it raises (KeyboardInterrupt included) unwinds the C++ loop as error_already_set and is re-raised
// in Python.
class PyEngine : public Engine {
 public:
  using Engine::Engine;
  void bind(const EngineBindings& bindings) override { PYBIND11_OVERRIDE_PURE(void, Engine, bind, bindings); }
  void run(GraphKind kind, std::int64_t past_len, int tokens) override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const Engine*>(this), "run");
    if (!override) throw EngineError("the Python engine does not implement run()");
    override(kind, past_len, tokens);
  }
};

// Python handles signals only on the main thread; there, the core's cancellation poll (before
// every engine pass) takes the GIL and runs the pending handlers, so Ctrl-C raises
// KeyboardInterrupt within one forward whatever the engine is (a C++ TensorRT engine never enters
// Python). At most every 10 ms: passes of a GPU engine take a few ms, and each GIL acquisition can
// wait for another Python thread's switch interval. Other threads are stopped through a
// CancelToken. Call with the GIL held.
constexpr std::chrono::milliseconds kSignalPollInterval{10};

Cancellation python_cancellation(const CancelToken* token) {
  using Clock = std::chrono::steady_clock;
  Cancellation cancel;
  cancel.token = token;
  const py::module_ threading = py::module_::import("threading");
  if (threading.attr("current_thread")().is(threading.attr("main_thread")())) {
    cancel.poll = [last = Clock::now() - kSignalPollInterval]() mutable {
      const auto now = Clock::now();
      if (now - last < kSignalPollInterval) return;
      last = now;
      const py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    };
  }
  return cancel;
}

// "cpu": the host loop and sampler; "cuda": cache, buffers and unmasking on the current GPU.
std::unique_ptr<DecodeBackend> make_backend(const std::string& device) {
  if (device == "cpu") return std::make_unique<HostBackend>();
  if (device == "cuda") {
#ifdef SDAR_HAVE_CUDA
    return std::make_unique<cuda::DeviceBackend>();  // throws a clear DeviceError without a GPU
#else
    throw Error(std::string("device='cuda' needs sdar_rt built with its CUDA kernels, and this build has none (") +
                SDAR_CUDA_REASON + "): reinstall it with SDAR_WITH_CUDA=ON (pip install --config-settings="
                "cmake.define.SDAR_WITH_CUDA=ON ...) on a machine with nvcc, or use device='cpu'");
#endif
  }
  throw InvalidArgument("device must be 'cpu' or 'cuda', got '" + device + "'");
}

py::dict stats_dict(const Stats& s) {
  py::dict d;
  d["nfe"] = s.nfe();
  d["nfe_prefill"] = s.nfe_prefill;
  d["nfe_denoise"] = s.nfe_denoise;
  d["nfe_commit"] = s.nfe_commit;
  d["nfe_fused"] = s.nfe_fused;
  d["decode_forwards"] = s.decode_forwards();
  d["steps_per_block"] = s.steps_per_block;
  d["block_seconds"] = s.block_seconds;
  d["tokens_generated"] = s.tokens_generated;
  d["num_rows"] = s.num_rows;
  d["cached_tokens"] = s.cached_tokens;
  d["tpf"] = s.tpf();
  d["prefill_seconds"] = s.prefill_seconds;
  d["total_seconds"] = s.total_seconds;
  d["engine_seconds"] = s.engine_seconds;
  d["time_to_first_block"] = s.time_to_first_block;
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "sdar_rt generation core (C++)";

  // Newest translator is tried first: register bases before subclasses.
  static py::exception<Error> sdar_error(m, "SdarError", PyExc_RuntimeError);
  static py::exception<EngineError> engine_error(m, "EngineError", sdar_error.ptr());
  static py::exception<InvalidArgument> invalid_argument(m, "InvalidArgumentError", PyExc_ValueError);
  static py::exception<ContextOverflow> context_overflow(m, "ContextOverflowError", invalid_argument.ptr());
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ContextOverflow& e) {
      py::set_error(context_overflow, e.what());
    } catch (const InvalidArgument& e) {
      py::set_error(invalid_argument, e.what());
    } catch (const EngineError& e) {
      py::set_error(engine_error, e.what());
    } catch (const Error& e) {
      py::set_error(sdar_error, e.what());
    }
  });

  py::enum_<GraphKind>(m, "GraphKind")
      .value("Prefill", GraphKind::Prefill)
      .value("Decode", GraphKind::Decode)
      .value("Fused", GraphKind::Fused);
  m.def("graph_name", &graph_name, "'prefill' | 'decode' | 'fused'");

  py::class_<ModelSpec>(m, "ModelSpec")
      .def(py::init([](int num_layers, int num_kv_heads, int head_dim, int vocab_size, int block_length,
                       int max_context, int batch, const std::string& kv_dtype, std::int64_t mask_id,
                       std::vector<std::int64_t> eos_ids, int prefill_chunk) {
             ModelSpec s;
             s.num_layers = num_layers;
             s.num_kv_heads = num_kv_heads;
             s.head_dim = head_dim;
             s.vocab_size = vocab_size;
             s.block_length = block_length;
             s.max_context = max_context;
             s.batch = batch;
             s.kv_dtype = parse_dtype(kv_dtype);
             s.mask_id = mask_id;
             s.eos_ids = std::move(eos_ids);
             s.prefill_chunk = prefill_chunk;
             s.validate();
             return s;
           }),
           py::kw_only(), py::arg("num_layers"), py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("vocab_size"),
           py::arg("block_length"), py::arg("max_context"), py::arg("batch") = 1, py::arg("kv_dtype") = "float32",
           py::arg("mask_id"), py::arg("eos_ids") = std::vector<std::int64_t>{}, py::arg("prefill_chunk") = 0)
      .def_readonly("num_layers", &ModelSpec::num_layers)
      .def_readonly("num_kv_heads", &ModelSpec::num_kv_heads)
      .def_readonly("head_dim", &ModelSpec::head_dim)
      .def_readonly("vocab_size", &ModelSpec::vocab_size)
      .def_readonly("block_length", &ModelSpec::block_length)
      .def_readonly("max_context", &ModelSpec::max_context)
      .def_readonly("batch", &ModelSpec::batch)
      .def_property_readonly("kv_dtype", [](const ModelSpec& s) { return dtype_name(s.kv_dtype); })
      .def_readonly("mask_id", &ModelSpec::mask_id)
      .def_readonly("eos_ids", &ModelSpec::eos_ids)
      .def_property_readonly("prefill_chunk", &ModelSpec::effective_prefill_chunk)
      .def_property_readonly("row_bytes", &ModelSpec::row_bytes);

  // Parameters arrive as Python objects so a wrong type gets the same ValueError (naming the
  // parameter) as a wrong value; the ranges are checked by the core when a call starts.
  namespace pv = py_values;
  py::class_<GenerationConfig>(m, "GenerationConfig")
      .def(py::init([](const py::object& max_new_tokens, const py::object& denoising_steps,
                       const py::object& remasking, const py::object& threshold, const py::object& eb_threshold,
                       const py::object& temperature,
                       const py::object& top_k, const py::object& top_p, const py::object& seed,
                       std::vector<std::int64_t> stop_ids, const py::object& fused_commit,
                       std::vector<std::uint32_t> row_ids) {
             GenerationConfig c;
             c.max_new_tokens = pv::to_int(max_new_tokens, "max_new_tokens");
             c.denoising_steps = pv::to_optional_int(denoising_steps, "denoising_steps");
             c.remasking = parse_remask_policy(pv::to_string(remasking, "remasking"));
             c.threshold = pv::to_double(threshold, "threshold");
             c.eb_threshold = pv::to_double(eb_threshold, "eb_threshold");
             c.temperature = pv::to_double(temperature, "temperature");
             c.top_k = pv::to_int(top_k, "top_k");
             c.top_p = pv::to_double(top_p, "top_p");
             c.seed = pv::to_seed(seed);
             c.stop_ids = std::move(stop_ids);
             c.fused_commit = pv::to_bool(fused_commit);
             c.row_ids = std::move(row_ids);
             return c;
           }),
           py::kw_only(), py::arg("max_new_tokens") = 128, py::arg("denoising_steps") = py::none(),
           py::arg("remasking") = "low_confidence_dynamic", py::arg("threshold") = 0.9, py::arg("eb_threshold") = 0.35,
           py::arg("temperature") = 0.0,
           py::arg("top_k") = 0, py::arg("top_p") = 1.0, py::arg("seed") = 0,
           py::arg("stop_ids") = std::vector<std::int64_t>{}, py::arg("fused_commit") = true,
           py::arg("row_ids") = std::vector<std::uint32_t>{},
           "Decoding parameters (README 'Generating'); denoising_steps None means the block length. Types are "
           "checked here, ranges when generate() starts; both raise InvalidArgumentError (a ValueError).")
      .def_property(
          "max_new_tokens", [](const GenerationConfig& c) { return c.max_new_tokens; },
          [](GenerationConfig& c, const py::object& v) { c.max_new_tokens = pv::to_int(v, "max_new_tokens"); })
      .def_property(
          "denoising_steps", [](const GenerationConfig& c) { return c.denoising_steps; },
          [](GenerationConfig& c, const py::object& v) {
            c.denoising_steps = pv::to_optional_int(v, "denoising_steps");
          })
      .def_property(
          "remasking", [](const GenerationConfig& c) { return remask_policy_name(c.remasking); },
          [](GenerationConfig& c, const py::object& v) {
            c.remasking = parse_remask_policy(pv::to_string(v, "remasking"));
          })
      .def_property(
          "threshold", [](const GenerationConfig& c) { return c.threshold; },
          [](GenerationConfig& c, const py::object& v) { c.threshold = pv::to_double(v, "threshold"); })
      .def_property(
          "eb_threshold", [](const GenerationConfig& c) { return c.eb_threshold; },
          [](GenerationConfig& c, const py::object& v) { c.eb_threshold = pv::to_double(v, "eb_threshold"); })
      .def_property(
          "temperature", [](const GenerationConfig& c) { return c.temperature; },
          [](GenerationConfig& c, const py::object& v) { c.temperature = pv::to_double(v, "temperature"); })
      .def_property(
          "top_k", [](const GenerationConfig& c) { return c.top_k; },
          [](GenerationConfig& c, const py::object& v) { c.top_k = pv::to_int(v, "top_k"); })
      .def_property(
          "top_p", [](const GenerationConfig& c) { return c.top_p; },
          [](GenerationConfig& c, const py::object& v) { c.top_p = pv::to_double(v, "top_p"); })
      .def_property(
          "seed", [](const GenerationConfig& c) { return c.seed; },
          [](GenerationConfig& c, const py::object& v) { c.seed = pv::to_seed(v); })
      .def_readwrite("stop_ids", &GenerationConfig::stop_ids)
      .def_property(
          "fused_commit", [](const GenerationConfig& c) { return c.fused_commit; },
          [](GenerationConfig& c, const py::object& v) { c.fused_commit = pv::to_bool(v); })
      .def_readwrite("row_ids", &GenerationConfig::row_ids);

  py::class_<Stats>(m, "Stats")
      .def_readonly("nfe_prefill", &Stats::nfe_prefill)
      .def_readonly("nfe_denoise", &Stats::nfe_denoise)
      .def_readonly("nfe_commit", &Stats::nfe_commit)
      .def_readonly("nfe_fused", &Stats::nfe_fused)
      .def_readonly("steps_per_block", &Stats::steps_per_block)
      .def_readonly("block_seconds", &Stats::block_seconds)
      .def_readonly("tokens_generated", &Stats::tokens_generated)
      .def_readonly("num_rows", &Stats::num_rows)
      .def_readonly("cached_tokens", &Stats::cached_tokens)
      .def_readonly("prefill_seconds", &Stats::prefill_seconds)
      .def_readonly("total_seconds", &Stats::total_seconds)
      .def_readonly("engine_seconds", &Stats::engine_seconds)
      .def_readonly("time_to_first_block", &Stats::time_to_first_block)
      .def_property_readonly("nfe", &Stats::nfe)
      .def_property_readonly("decode_forwards", &Stats::decode_forwards)
      .def_property_readonly("tpf", &Stats::tpf)
      .def("to_dict", &stats_dict)
      .def("__repr__", [](const Stats& s) { return "Stats(" + py::repr(stats_dict(s)).cast<std::string>() + ")"; });

  py::class_<RowResult>(m, "RowResult")
      .def_readonly("tokens", &RowResult::tokens)
      .def_readonly("finish_reason", &RowResult::finish_reason);

  py::class_<GenerationResult>(m, "GenerationResult")
      .def_readonly("rows", &GenerationResult::rows)
      .def_readonly("stats", &GenerationResult::stats);

  py::class_<EngineBindings>(m, "EngineBindings")
      .def_readonly("input_ids", &EngineBindings::input_ids)
      .def_readonly("ids_capacity", &EngineBindings::ids_capacity)
      .def_readonly("logits", &EngineBindings::logits)
      .def_readonly("key_cache", &EngineBindings::key_cache)
      .def_readonly("value_cache", &EngineBindings::value_cache)
      .def_readonly("row_bytes", &EngineBindings::row_bytes)
      .def_readonly("batch", &EngineBindings::batch)
      .def_readonly("num_layers", &EngineBindings::num_layers)
      .def_readonly("num_kv_heads", &EngineBindings::num_kv_heads)
      .def_readonly("head_dim", &EngineBindings::head_dim)
      .def_readonly("block_length", &EngineBindings::block_length)
      .def_readonly("vocab_size", &EngineBindings::vocab_size)
      .def_readonly("max_context", &EngineBindings::max_context)
      .def_property_readonly("kv_dtype", [](const EngineBindings& b) { return dtype_name(b.kv_dtype); })
      .def_readonly("device_memory", &EngineBindings::device_memory)
      .def_readonly("stream", &EngineBindings::stream);

  py::class_<Engine, PyEngine, std::shared_ptr<Engine>>(m, "Engine")
      .def(py::init<>())
      .def("bind", &Engine::bind, py::arg("bindings"))
      .def("run", &Engine::run, py::arg("kind"), py::arg("past_len"), py::arg("tokens"));

  py::class_<SyntheticEngine, Engine, std::shared_ptr<SyntheticEngine>>(
      m, "SyntheticEngine",
      "A C++ engine that never enters Python (as TensorRT): position p decodes to token (7p + 1) % V (the next id "
      "if that is mask_id), each pass takes pass_seconds. For tests and loop-overhead measurements; device='cpu'.")
      .def(py::init<std::int64_t, double>(), py::kw_only(), py::arg("mask_id"), py::arg("pass_seconds") = 0.0)
      .def("winner", &SyntheticEngine::winner, py::arg("position"))
      .def_property_readonly("calls", &SyntheticEngine::calls);

  py::class_<CancelToken, std::shared_ptr<CancelToken>>(
      m, "CancelToken", "Stops a generate() call running in another thread: rows still running end as 'cancelled'.")
      .def(py::init<>())
      .def("cancel", &CancelToken::cancel, "Ends the call at its next engine pass; one-shot.")
      .def_property_readonly("cancelled", &CancelToken::cancelled);

  py::class_<Generator>(m, "Generator")
      .def(py::init([](const ModelSpec& spec, std::shared_ptr<Engine> engine, const std::string& device) {
             return std::make_unique<Generator>(spec, std::move(engine), make_backend(device));
           }),
           py::arg("spec"), py::arg("engine"), py::arg("device") = "cpu", py::keep_alive<1, 3>(),
           "device='cpu': host loop and sampler; 'cuda': KV cache, buffers and unmasking kernels on the current "
           "GPU (the engine gets device addresses and the stream in its bindings).")
      .def(
          "generate",
          [](Generator& self, const std::vector<std::vector<std::int64_t>>& prompts, const GenerationConfig& config,
             const py::object& on_block, const py::object& on_step, bool reuse_cache,
             const std::shared_ptr<CancelToken>& cancel) {
            BlockCallback callback;
            if (!on_block.is_none()) {
              const py::object* fn = &on_block;  // outlives the call; never copied without the GIL
              callback = [fn](int block, const std::vector<std::vector<std::int64_t>>& tokens) -> bool {
                py::gil_scoped_acquire gil;
                const py::object keep = (*fn)(block, tokens);
                return keep.is_none() || keep.cast<bool>();
              };
            }
            CallOptions options;
            options.on_block = std::move(callback);
            options.on_step = bindings::python_step_callback(on_step);
            options.reuse_cache = reuse_cache;
            options.cancel = python_cancellation(cancel.get());
            const py::gil_scoped_release release;
            return self.generate(prompts, config, options);
          },
          py::arg("prompts"), py::arg("config"), py::arg("on_block") = py::none(), py::kw_only(),
          py::arg("on_step") = py::none(), py::arg("reuse_cache") = false, py::arg("cancel") = nullptr,
          "Runs the decoding rules over 1..B equal-length prompts; releases the GIL. on_block(block_index, "
          "tokens_per_row) -> bool|None is called per finished block; False cancels. on_step(block_index, step, "
          "block_start, tokens_per_row, masked_per_row) -> bool|None after every denoising step; False cancels. "
          "reuse_cache: start from the longest whole-block prefix of the prompts the KV cache holds. cancel: a "
          "CancelToken another thread may set; checked before every engine pass, like Ctrl-C when called on the "
          "main thread. Concurrent calls on one Generator are serialised.")
      .def("cached_tokens", &Generator::cached_tokens, py::arg("row") = 0, py::call_guard<py::gil_scoped_release>(),
           "The token ids whose K/V the committed prefix of cache row `row` holds.")
      .def_property_readonly("spec", &Generator::spec)
      .def_property_readonly("bindings", &Generator::bindings);

  m.def("philox4x32_10",
        [](const std::vector<std::uint32_t>& counter, const std::vector<std::uint32_t>& key) {
          if (counter.size() != 4 || key.size() != 2) throw InvalidArgument("philox4x32_10 needs 4 counter and 2 key words");
          const PhiloxCounter out = philox4x32_10({counter[0], counter[1], counter[2], counter[3]}, {key[0], key[1]});
          return std::vector<std::uint32_t>(out.begin(), out.end());
        },
        py::arg("counter"), py::arg("key"));
  m.def("philox_uniform", &philox_uniform, py::arg("seed"), py::arg("row"), py::arg("step"), py::arg("position"));
  m.def("denoising_schedule", &denoising_schedule, py::arg("block_length"), py::arg("steps"));
  m.def(
      "sample",
      [](const py::array_t<float, py::array::c_style | py::array::forcecast>& logits, double temperature, int top_k,
         double top_p, double u) {
        if (logits.ndim() != 1 || logits.size() == 0) throw InvalidArgument("sample() needs a non-empty 1-D logits array");
        Sampler sampler(static_cast<int>(logits.size()));
        const Sample s = sampler.sample(logits.data(), SampleParams{temperature, top_k, top_p}, u);
        return py::make_tuple(s.token, s.confidence);
      },
      py::arg("logits"), py::arg("temperature") = 0.0, py::arg("top_k") = 0, py::arg("top_p") = 1.0,
      py::arg("u") = 0.0, "One draw of the core's sampler: (token, confidence).");
  m.def(
      "entropy",
      [](const py::array_t<float, py::array::c_style | py::array::forcecast>& logits, double temperature) {
        if (logits.ndim() != 1 || logits.size() == 0) throw InvalidArgument("entropy() needs a non-empty 1-D logits array");
        Sampler sampler(static_cast<int>(logits.size()));
        return sampler.sample(logits.data(), SampleParams{temperature, 0, 1.0, true}, 0.0).entropy;
      },
      py::arg("logits"), py::arg("temperature") = 0.0,
      "The entropy (nats) entropy_bounded ranks a position by: of softmax(logits / temperature), or of "
      "softmax(logits) when temperature is 0, over the whole vocabulary.");
  sdar::cpu::bind_cpu(m);
#ifdef SDAR_HAVE_CUDA
  sdar::cuda::bind_cuda(m);
#endif
#ifdef SDAR_HAVE_TENSORRT
  sdar::trt::bind_trt(m);
#endif
  m.def("build_info", []() {
    py::dict d;
#ifdef SDAR_HAVE_CUDA
    d["cuda"] = true;
#else
    d["cuda"] = false;
#endif
#ifdef SDAR_HAVE_TENSORRT
    d["tensorrt"] = true;
#else
    d["tensorrt"] = false;
#endif
    d["cuda_mode"] = SDAR_CUDA_MODE;      // the SDAR_WITH_CUDA switch: AUTO | ON | OFF
    d["cuda_reason"] = SDAR_CUDA_REASON;  // why the kernels were built or skipped
    return d;
  },
  "What this build contains: {'cuda': bool, 'tensorrt': bool, 'cuda_mode': SDAR_WITH_CUDA, 'cuda_reason': why}.");
}
