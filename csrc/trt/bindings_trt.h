// Python access to the TensorRT engine (included by csrc/bindings.cpp under SDAR_HAVE_TENSORRT
// only). The Python Generator builds it from manifest.json's "engines" list.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "errors.h"
#include "trt/trt_engine.h"

namespace sdar::trt {

namespace py = pybind11;

inline GraphKind parse_graph_kind(const std::string& name) {
  if (name == "prefill") return GraphKind::Prefill;
  if (name == "decode") return GraphKind::Decode;
  if (name == "fused") return GraphKind::Fused;
  throw InvalidArgument("TensorRT engine entry: graph must be prefill | decode | fused, got '" + name + "'");
}

inline void bind_trt(py::module_& m) {
  m.def("tensorrt_version", &tensorrt_runtime_version, "X.Y.Z of the TensorRT library loaded at run time.");
  py::class_<TrtEngine, Engine, std::shared_ptr<TrtEngine>>(m, "TrtEngine")
      .def(py::init([](const std::vector<std::map<std::string, std::string>>& engines, int past_bucket,
                       bool cuda_graphs) {
             TrtEngineOptions options;
             for (const auto& entry : engines) {
               const auto field = [&entry](const char* key) {
                 const auto found = entry.find(key);
                 if (found == entry.end()) {
                   throw InvalidArgument(std::string("TensorRT engine entry without '") + key +
                                         "'; rebuild the engines with: sdar-export ARTIFACT --engine trt");
                 }
                 return found->second;
               };
               TrtEngineFile file;
               file.graph = parse_graph_kind(field("graph"));
               file.path = field("path");
               file.gpu = field("gpu");
               file.compute_capability = field("compute_capability");
               file.tensorrt = field("tensorrt");
               options.engines.push_back(file);
             }
             options.past_bucket = past_bucket;
             options.cuda_graphs = cuda_graphs;
             return std::make_shared<TrtEngine>(options);
           }),
           py::arg("engines"), py::kw_only(), py::arg("past_bucket") = 256, py::arg("cuda_graphs") = true,
           "engines: [{graph, path, gpu, compute_capability, tensorrt}] from manifest.json (absolute paths). "
           "Checks GPU and TensorRT version against each entry.")
      .def("has_graph",
           [](const TrtEngine& e, const std::string& graph) { return e.has_graph(parse_graph_kind(graph)); })
      .def_property_readonly("captured_graphs", &TrtEngine::captured_graphs);
}

}  // namespace sdar::trt
