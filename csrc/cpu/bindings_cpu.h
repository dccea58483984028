// Python access to the native CPU engine and its kernels (included by csrc/bindings.cpp).
// The kernel-level objects serve the kernel tests and sdar_rt.bench.kernels; the Generator uses
// the engine.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "cpu/amx.h"
#include "cpu/cpu_engine.h"
#include "cpu/cpu_features.h"
#include "cpu/cpu_model.h"
#include "cpu/matmul.h"
#include "cpu/thread_pool.h"
#include "errors.h"

namespace sdar::cpu {

namespace py = pybind11;

inline WeightFormat parse_weight_format(const std::string& name) {
  if (name == "f32") return WeightFormat::F32;
  if (name == "q4") return WeightFormat::Q4;
  if (name == "q8") return WeightFormat::Q8;
  throw InvalidArgument("weight format must be 'f32', 'q4' or 'q8', got '" + name + "'");
}

inline Activations parse_activations(const std::string& name) {
  if (name == "int8") return Activations::Int8;
  if (name == "float") return Activations::Float;
  throw InvalidArgument("activations must be 'int8' or 'float', got '" + name + "'");
}

// A packed matrix over numpy arrays it keeps alive (layouts: runtime/cpu/packed_matrix.h).
class ArrayMatrix {
 public:
  ArrayMatrix(const std::string& format, int rows, int cols, py::array data, py::object scales, py::object zero_scales,
              int group, bool symmetric) {
    view_.format = parse_weight_format(format);
    view_.rows = rows;
    view_.cols = cols;
    view_.group = group;
    view_.symmetric = symmetric;
    view_.validate_shape("array");
    data_ = keep(data, view_.data_bytes(), "data");
    view_.data = data_.data();
    if (view_.format != WeightFormat::F32) {
      if (scales.is_none()) throw InvalidArgument("a quantized matrix needs scales");
      scales_ = keep(scales.cast<py::array>(), view_.scale_bytes(), "scales");
      view_.scales = static_cast<const float*>(scales_.data());
      if (!symmetric) {
        if (zero_scales.is_none()) throw InvalidArgument("an asymmetric matrix needs zero_scales");
        zero_scales_ = keep(zero_scales.cast<py::array>(), view_.zero_scale_bytes(), "zero_scales");
        view_.zero_scales = static_cast<const float*>(zero_scales_.data());
      }
    }
    view_.validate("array");
  }
  const PackedMatrix& view() const { return view_; }

 private:
  static py::array keep(const py::array& a, std::size_t bytes, const char* what) {
    if (!(a.flags() & py::array::c_style)) throw InvalidArgument(std::string(what) + " must be C-contiguous");
    if (static_cast<std::size_t>(a.nbytes()) != bytes) {
      throw InvalidArgument(std::string(what) + " has " + std::to_string(a.nbytes()) + " bytes, the layout needs " +
                            std::to_string(bytes));
    }
    return a;
  }
  PackedMatrix view_;
  py::array data_;
  py::array scales_;
  py::array zero_scales_;
};

// A thread pool and a matmul workspace: y = x W^T for ArrayMatrix weights.
class MatmulRunner {
 public:
  MatmulRunner(int threads, const std::string& kernels)
      : pool_(threads), matmul_(select_kernels(kernels), pool_) {}

  py::array_t<float> matmul(const ArrayMatrix& w, const py::array_t<float, py::array::c_style | py::array::forcecast>& x,
                            const std::string& activations) {
    const auto [rows, cols] = shape(x);
    if (cols != w.view().cols) {
      throw InvalidArgument("x has " + std::to_string(cols) + " columns, the matrix " + std::to_string(w.view().cols));
    }
    const Activations act = parse_activations(activations);
    py::array_t<float> y({rows, w.view().rows});
    matmul_.reserve(rows, cols);
    const float* xp = x.data();
    float* yp = y.mutable_data();
    {
      const py::gil_scoped_release release;
      matmul_(w.view(), xp, rows, cols, yp, w.view().rows, act);
    }
    return y;
  }

  // x [rows, K] against every matrix in turn (each [N_i, K]); the outputs go to a scratch buffer.
  // One call per benchmark round, so Python's overhead is not in the measured time.
  void run_all(const std::vector<std::shared_ptr<ArrayMatrix>>& ws,
               const py::array_t<float, py::array::c_style | py::array::forcecast>& x, const std::string& activations) {
    const auto [rows, cols] = shape(x);
    const Activations act = parse_activations(activations);
    int widest = 0;
    for (const auto& w : ws) {
      if (w->view().cols != cols) throw InvalidArgument("every matrix must have as many columns as x");
      widest = std::max(widest, w->view().rows);
    }
    matmul_.reserve(rows, cols);
    scratch_.resize(static_cast<std::size_t>(rows) * widest);
    const float* xp = x.data();
    const py::gil_scoped_release release;
    for (const auto& w : ws) matmul_(w->view(), xp, rows, cols, scratch_.data(), w->view().rows, act);
  }

  // Seconds to read `a` once with the pool's threads (a memory-bandwidth probe for the benchmark).
  double read_seconds(const py::array& a) {
    const auto* words = static_cast<const std::uint64_t*>(a.data());
    const std::size_t n = static_cast<std::size_t>(a.nbytes()) / sizeof(std::uint64_t);
    const int tasks = pool_.size() * 4;
    std::vector<std::uint64_t> sums(tasks, 0);
    const py::gil_scoped_release release;
    const auto start = std::chrono::steady_clock::now();
    pool_.parallel_for(tasks, [&](int t) {
      std::uint64_t s = 0;
      for (std::size_t i = n * t / tasks; i < n * (t + 1) / tasks; ++i) s += words[i];
      sums[t] = s;
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::uint64_t total = 0;
    for (const std::uint64_t s : sums) total += s;
    sink_ = total;  // keeps the reads
    return seconds;
  }

  std::string kernels() const { return matmul_.kernels().name; }
  bool amx() const { return matmul_.amx(); }
  bool quantized_strips() const { return matmul_.strips_for(WeightFormat::Q4) && !matmul_.amx(); }
  int threads() { return pool_.size(); }

 private:
  static std::pair<int, int> shape(const py::array_t<float, py::array::c_style | py::array::forcecast>& x) {
    if (x.ndim() != 2 || x.shape(0) < 1) throw InvalidArgument("x must be a 2-D float32 array with at least one row");
    return {static_cast<int>(x.shape(0)), static_cast<int>(x.shape(1))};
  }
  ThreadPool pool_;
  Matmul matmul_;
  std::vector<float> scratch_;
  volatile std::uint64_t sink_ = 0;
};

inline TensorEntry tensor_entry(const std::string& name, const py::dict& d) {
  TensorEntry e;
  e.name = name;
  const auto get_range = [&](const char* key, std::uint64_t& offset, std::uint64_t& bytes) {
    if (!d.contains(key) || d[key].is_none()) return;
    const auto r = d[key].cast<std::vector<std::uint64_t>>();
    if (r.size() != 2) throw InvalidArgument("tensor '" + name + "': " + key + " must be [offset, bytes]");
    offset = r[0];
    bytes = r[1];
  };
  try {
    e.kind = d["kind"].cast<std::string>();
    e.rows = d["rows"].cast<int>();
    e.cols = d.contains("cols") ? d["cols"].cast<int>() : 0;
    e.group = d.contains("group") && !d["group"].is_none() ? d["group"].cast<int>() : 0;
    e.symmetric = d.contains("symmetric") ? d["symmetric"].cast<bool>() : true;
  } catch (const py::error_already_set&) {
    throw InvalidArgument("tensor '" + name + "': entry needs kind, rows (and cols for a matrix)");
  } catch (const py::cast_error&) {
    throw InvalidArgument("tensor '" + name + "': kind, rows, cols, group or symmetric has the wrong type");
  }
  get_range("data", e.data_offset, e.data_bytes);
  get_range("scales", e.scales_offset, e.scales_bytes);
  get_range("zero_scales", e.zero_scales_offset, e.zero_scales_bytes);
  return e;
}

// Binds a CPU engine to numpy buffers (export validation and tests, without a Generator).
inline void bind_arrays(CpuEngine& engine, const py::array_t<std::int64_t, py::array::c_style>& ids,
                        const py::array_t<float, py::array::c_style>& logits, const std::vector<py::array>& keys,
                        const std::vector<py::array>& values, int block_length) {
  if (keys.empty() || keys.size() != values.size()) throw InvalidArgument("bind_arrays: one key and value cache per layer");
  const auto& k0 = keys[0];
  if (k0.ndim() != 4 || ids.ndim() != 2 || logits.ndim() != 3) {
    throw InvalidArgument("bind_arrays: ids [B, T], logits [B, L, V], caches [S, B, KVH, D]");
  }
  EngineBindings b;
  b.input_ids = reinterpret_cast<std::uintptr_t>(ids.data());
  b.ids_capacity = static_cast<int>(ids.shape(1));
  b.logits = reinterpret_cast<std::uintptr_t>(logits.data());
  b.batch = static_cast<int>(ids.shape(0));
  b.max_context = static_cast<int>(k0.shape(0));
  b.num_kv_heads = static_cast<int>(k0.shape(2));
  b.head_dim = static_cast<int>(k0.shape(3));
  b.num_layers = static_cast<int>(keys.size());
  b.block_length = block_length;
  b.vocab_size = static_cast<int>(logits.shape(2));
  b.row_bytes = static_cast<std::size_t>(b.batch) * b.num_kv_heads * b.head_dim * sizeof(float);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    for (const py::array* a : {&keys[i], &values[i]}) {
      if (!py::isinstance<py::array_t<float>>(*a) || !(a->flags() & py::array::c_style) || a->ndim() != 4 ||
          a->shape(0) != k0.shape(0) || a->shape(1) != b.batch || a->shape(2) != b.num_kv_heads || a->shape(3) != b.head_dim) {
        throw InvalidArgument("bind_arrays: every cache must be a C-contiguous float32 [S, B, KVH, D] array like the first");
      }
    }
    b.key_cache.push_back(reinterpret_cast<std::uintptr_t>(keys[i].data()));
    b.value_cache.push_back(reinterpret_cast<std::uintptr_t>(values[i].data()));
  }
  if (logits.shape(0) != b.batch || logits.shape(1) != block_length) {
    throw InvalidArgument("bind_arrays: logits must be [B, block_length, V]");
  }
  engine.bind(b);
}

inline void bind_cpu(py::module_& m) {
  m.def("cpu_kernels_available", &available_kernels,
        "CPU kernel tables this build has and this CPU can run, fastest first.");
  m.def("cpu_amx_usable", &amx_usable,
        "Whether this build, CPU and OS can run the AMX-INT8 path of quantized prefill matmuls (with the "
        "avx512vnni kernels; SDAR_CPU_AMX=0 turns it off).");
  py::class_<ArrayMatrix, std::shared_ptr<ArrayMatrix>>(m, "CpuMatrix")
      .def(py::init<const std::string&, int, int, py::array, py::object, py::object, int, bool>(), py::arg("format"),
           py::arg("rows"), py::arg("cols"), py::arg("data"), py::arg("scales") = py::none(),
           py::arg("zero_scales") = py::none(), py::arg("group") = 0, py::arg("symmetric") = true,
           "A weight matrix in the CPU engine's packed layout (sdar_export.cpu_weights writes it).")
      .def_property_readonly("rows", [](const ArrayMatrix& w) { return w.view().rows; })
      .def_property_readonly("cols", [](const ArrayMatrix& w) { return w.view().cols; });
  py::class_<MatmulRunner>(m, "CpuMatmul")
      .def(py::init<int, const std::string&>(), py::arg("threads") = 1, py::arg("kernels") = "auto")
      .def("matmul", &MatmulRunner::matmul, py::arg("matrix"), py::arg("x"), py::arg("activations") = "int8",
           "x [M, K] @ W^T -> [M, N] float32.")
      .def("run_all", &MatmulRunner::run_all, py::arg("matrices"), py::arg("x"), py::arg("activations") = "int8")
      .def("read_seconds", &MatmulRunner::read_seconds, py::arg("array"))
      .def_property_readonly("kernels", &MatmulRunner::kernels)
      .def_property_readonly("amx", &MatmulRunner::amx,
                             "Whether quantized matmuls of many rows (int8 activations) take the AMX path.")
      .def_property_readonly("quantized_strips", &MatmulRunner::quantized_strips,
                             "Whether quantized matmuls of many rows (int8 activations) take the kernel table's "
                             "blocked strips kernel (the AMX path off, SDAR_CPU_GEMM_MIN_ROWS not 0).")
      .def_property_readonly("threads", &MatmulRunner::threads);

  py::class_<CpuModel, std::shared_ptr<CpuModel>>(m, "CpuModel")
      .def(py::init([](const std::string& path, const py::dict& dims, const py::dict& tensors) {
             CpuModelDims d;
             try {
               d.hidden_size = dims["hidden_size"].cast<int>();
               d.intermediate_size = dims["intermediate_size"].cast<int>();
               d.num_heads = dims["num_heads"].cast<int>();
               d.num_kv_heads = dims["num_kv_heads"].cast<int>();
               d.head_dim = dims["head_dim"].cast<int>();
               d.num_layers = dims["num_layers"].cast<int>();
               d.vocab_size = dims["vocab_size"].cast<int>();
               d.rms_norm_eps = dims["rms_norm_eps"].cast<float>();
             } catch (const py::error_already_set&) {
               throw InvalidArgument(path + ": the CPU engine's model dimensions are incomplete; re-export the artifact");
             }
             std::vector<TensorEntry> entries;
             for (const auto& item : tensors) {
               entries.push_back(tensor_entry(item.first.cast<std::string>(), item.second.cast<py::dict>()));
             }
             return std::make_shared<CpuModel>(std::make_shared<MappedFile>(path), d, entries);
           }),
           py::arg("path"), py::arg("dims"), py::arg("tensors"),
           "The packed weights of an artifact (memory-mapped) with the model's dimensions; checks every tensor.");

  py::class_<CpuEngine, Engine, std::shared_ptr<CpuEngine>>(m, "CpuEngine")
      .def(py::init([](std::shared_ptr<CpuModel> model, int threads, const std::string& kernels,
                       const std::string& activations) {
             CpuEngineOptions o;
             o.threads = threads;
             o.kernels = kernels;
             o.activations = parse_activations(activations);
             return std::make_shared<CpuEngine>(std::move(model), o);
           }),
           py::arg("model"), py::arg("threads") = 1, py::arg("kernels") = "auto", py::arg("activations") = "int8",
           "The native CPU engine over a CpuModel (activations: 'int8' for quantized weights, as ONNX Runtime's "
           "accuracy level 4, or 'float').")
      .def("run", &CpuEngine::run, py::arg("kind"), py::arg("past_len"), py::arg("tokens"),
           py::call_guard<py::gil_scoped_release>())
      .def("bind_arrays", &bind_arrays, py::arg("input_ids"), py::arg("logits"), py::arg("key_caches"),
           py::arg("value_caches"), py::arg("block_length"),
           "Binds to numpy buffers (keep them alive): ids [B, T] int64, logits [B, L, V] float32, caches [S, B, KVH, D].")
      .def_property_readonly("kernels", &CpuEngine::kernels)
      .def_property_readonly("amx", &CpuEngine::amx,
                             "Whether quantized matmuls of many rows (a prefill's) take the AMX path.")
      .def_property_readonly("threads", &CpuEngine::threads)
      .def_property_readonly("runs", &CpuEngine::runs)
      .def_property_readonly("seconds", &CpuEngine::seconds)
      .def(
          "profile",
          [](const CpuEngine& e) {
            py::dict d;
            d["runs"] = e.runs();
            d["seconds"] = e.seconds();
            for (int p = 0; p < static_cast<int>(Phase::Count); ++p) {
              d[phase_name(static_cast<Phase>(p))] = e.phase_seconds(static_cast<Phase>(p));
            }
            return d;
          },
          "Seconds inside run() (summed over runs), and their split by phase: each matmul by weight, "
          "attention, and the rest (embedding, norms, RoPE, SwiGLU, residuals).");
}

}  // namespace sdar::cpu
