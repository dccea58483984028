// Python access to the TensorRT engine (included by csrc/bindings.cpp under SDAR_HAVE_TENSORRT
// only). The Python Generator builds it from manifest.json's TensorRT "engines" entry.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <string>

#include "errors.h"
#include "trt/trt_engine.h"

namespace sdar::trt {

namespace py = pybind11;

inline void bind_trt(py::module_& m) {
  m.def("tensorrt_version", &tensorrt_runtime_version, "X.Y.Z of the TensorRT library loaded at run time.");
  py::class_<TrtEngine, Engine, std::shared_ptr<TrtEngine>>(m, "TrtEngine")
      .def(py::init([](const std::map<std::string, std::string>& plan, const std::map<std::string, int>& profiles,
                       int past_bucket, bool cuda_graphs) {
             const auto field = [&plan](const char* key) {
               const auto found = plan.find(key);
               if (found == plan.end()) {
                 throw InvalidArgument(std::string("TensorRT plan entry without '") + key +
                                       "'; rebuild the plan with: sdar-export ARTIFACT --engine trt");
               }
               return found->second;
             };
             TrtEngineOptions options;
             options.plan.path = field("path");
             options.plan.gpu = field("gpu");
             options.plan.compute_capability = field("compute_capability");
             options.plan.tensorrt = field("tensorrt");
             for (const auto& [kind, index] : profiles) {
               const int slot = kind == "prefill" ? 0 : kind == "decode" ? 1 : kind == "fused" ? 2 : -1;
               if (slot < 0 || index < 0) {
                 throw InvalidArgument("TensorRT plan entry: profiles maps prefill | decode | fused to an index >= 0, "
                                       "got '" + kind + "': " + std::to_string(index));
               }
               options.plan.profiles[static_cast<std::size_t>(slot)] = index;
             }
             options.past_bucket = past_bucket;
             options.cuda_graphs = cuda_graphs;
             return std::make_shared<TrtEngine>(options);
           }),
           py::arg("plan"), py::arg("profiles"), py::kw_only(), py::arg("past_bucket") = 256,
           py::arg("cuda_graphs") = true,
           "plan: {path, gpu, compute_capability, tensorrt} of manifest.json's TensorRT entry (absolute path); "
           "profiles: {kind: optimization profile index}. Checks GPU and TensorRT version first.")
      .def("has_graph",
           [](const TrtEngine& e, const std::string& kind) {
             if (kind == "prefill") return e.has_graph(GraphKind::Prefill);
             if (kind == "decode") return e.has_graph(GraphKind::Decode);
             if (kind == "fused") return e.has_graph(GraphKind::Fused);
             throw InvalidArgument("kind must be prefill | decode | fused, got '" + kind + "'");
           })
      .def_property_readonly("max_prefill_tokens", &TrtEngine::max_prefill_tokens)
      .def_property_readonly("scratch_bytes", &TrtEngine::scratch_bytes)
      .def_property_readonly("captured_graphs", &TrtEngine::captured_graphs);
}

}  // namespace sdar::trt
