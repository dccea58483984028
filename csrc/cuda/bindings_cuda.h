// Python access to the CUDA kernels for the GPU tests and the micro-benchmark (included by
// csrc/bindings.cpp under SDAR_HAVE_CUDA only). Device memory is handled through DeviceArray, so
// the tests need neither torch nor cupy with CUDA.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>

#include "buffer.h"
#include "cuda/cuda_allocator.h"
#include "cuda/cuda_check.h"
#include "cuda/philox_check.h"
#include "cuda/stream.h"
#include "cuda/unmask.h"
#include "errors.h"
#include "generation_config.h"

namespace sdar::cuda {

namespace py = pybind11;

// A zero-filled device allocation with synchronous host copies (tests only).
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t bytes) : buffer_(std::make_shared<CudaAllocator>(), bytes) {}
  std::uintptr_t ptr() const { return reinterpret_cast<std::uintptr_t>(buffer_.data()); }
  std::size_t nbytes() const { return buffer_.size(); }
  void upload(const py::buffer& data) {
    const py::buffer_info info = data.request();
    const auto bytes = static_cast<std::size_t>(info.size * info.itemsize);
    if (bytes > nbytes()) throw InvalidArgument("DeviceArray.upload: " + std::to_string(bytes) + " bytes into " +
                                                std::to_string(nbytes()));
    SDAR_CUDA_CHECK(cudaMemcpy(buffer_.data(), info.ptr, bytes, cudaMemcpyHostToDevice));
  }
  // Copies the first `nbytes` bytes back as raw bytes.
  py::bytes download(std::size_t bytes) const {
    if (bytes > nbytes()) throw InvalidArgument("DeviceArray.download: more bytes than allocated");
    std::string host(bytes, '\0');
    SDAR_CUDA_CHECK(cudaDeviceSynchronize());
    SDAR_CUDA_CHECK(cudaMemcpy(host.data(), buffer_.data(), bytes, cudaMemcpyDeviceToHost));
    return py::bytes(host);
  }

 private:
  Buffer buffer_;
};

inline LogitsType parse_logits_type(const std::string& name) {
  if (name == "float32") return LogitsType::Float32;
  if (name == "float16") return LogitsType::Float16;
  if (name == "bfloat16") return LogitsType::BFloat16;
  throw InvalidArgument("logits dtype must be float32 | float16 | bfloat16, got '" + name + "'");
}

template <typename T>
T* device_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

inline void bind_cuda(py::module_& m) {
  m.def("cuda_device_count", &device_count, "Usable CUDA devices (0 without a GPU or driver).");
  m.def("cuda_device_synchronize", []() { SDAR_CUDA_CHECK(cudaDeviceSynchronize()); });
  m.def(
      "cuda_copy_to_device",
      [](std::uintptr_t address, const py::buffer& data) {
        const py::buffer_info info = data.request();
        SDAR_CUDA_CHECK(cudaMemcpy(device_ptr<void>(address), info.ptr, static_cast<std::size_t>(info.size * info.itemsize),
                                   cudaMemcpyHostToDevice));
      },
      py::arg("address"), py::arg("data"),
      "Synchronous copy of a host buffer to a device address (tests and benchmarks: e.g. an engine's logits).");
  m.def(
      "cuda_memory_info",
      []() {
        std::size_t free_bytes = 0, total_bytes = 0;
        SDAR_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
        return py::make_tuple(free_bytes, total_bytes);
      },
      "(free, total) bytes of the current device (cudaMemGetInfo; on Jetson the memory shared with the CPU).");

  py::class_<DeviceArray>(m, "DeviceArray")
      .def(py::init<std::size_t>(), py::arg("nbytes"))
      .def_property_readonly("ptr", &DeviceArray::ptr)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def("upload", &DeviceArray::upload, py::arg("data"))
      .def("download", &DeviceArray::download, py::arg("nbytes"));

  py::class_<Event>(m, "CudaEvent")
      .def(py::init<bool>(), py::arg("timing") = true)
      .def("record", [](const Event& e, std::uintptr_t stream) { e.record(reinterpret_cast<cudaStream_t>(stream)); },
           py::arg("stream") = 0)
      .def("synchronize", &Event::synchronize)
      .def("elapsed_ms_since", &Event::elapsed_ms_since, py::arg("start"));

  m.def(
      "cuda_philox_uniforms",
      [](std::uint64_t seed, std::uintptr_t counters, int count, std::uintptr_t out) {
        philox_uniforms(seed, device_ptr<const std::uint32_t>(counters), count, device_ptr<double>(out), nullptr);
      },
      py::arg("seed"), py::arg("counters"), py::arg("count"), py::arg("out"),
      "out[i] = philox_uniform(seed, *counters[3i:3i+3]) on the device (device pointers).");

  py::class_<UnmaskWorkspace>(m, "CudaUnmask")
      .def(py::init([](int max_batch, int block_length, int vocab_size, bool sampling) {
             return std::make_unique<UnmaskWorkspace>(UnmaskLimits{max_batch, block_length, vocab_size, sampling});
           }),
           py::kw_only(), py::arg("max_batch"), py::arg("block_length"), py::arg("vocab_size"),
           py::arg("sampling") = true)
      .def(
          "step",
          [](UnmaskWorkspace& w, std::uintptr_t logits, const std::string& dtype, std::uintptr_t tokens,
             int tokens_stride, std::uintptr_t masked, int masked_stride, std::uintptr_t row_done,
             std::uintptr_t row_ids, std::uintptr_t row_steps, int rows, int block_start, int scheduled,
             const std::string& remasking, double threshold, double temperature, int top_k, double top_p,
             std::uint64_t seed, std::uintptr_t stream) {
            UnmaskBuffers b;
            b.logits = device_ptr<const void>(logits);
            b.logits_type = parse_logits_type(dtype);
            b.tokens = device_ptr<std::int64_t>(tokens);
            b.tokens_stride = tokens_stride;
            b.masked = device_ptr<std::uint8_t>(masked);
            b.masked_stride = masked_stride;
            b.row_done = device_ptr<const std::uint8_t>(row_done);
            b.row_ids = device_ptr<const std::uint32_t>(row_ids);
            b.row_steps = device_ptr<std::uint32_t>(row_steps);
            UnmaskParams p;
            p.rows = rows;
            p.block_start = block_start;
            p.scheduled = scheduled;
            p.remasking = parse_remask_policy(remasking);
            p.threshold = threshold;
            p.temperature = temperature;
            p.top_k = top_k;
            p.top_p = top_p;
            p.seed = seed;
            w.step(b, p, reinterpret_cast<cudaStream_t>(stream));
          },
          py::kw_only(), py::arg("logits"), py::arg("dtype") = "float32", py::arg("tokens"), py::arg("tokens_stride"),
          py::arg("masked"), py::arg("masked_stride"), py::arg("row_done") = 0, py::arg("row_ids") = 0,
          py::arg("row_steps") = 0, py::arg("rows"), py::arg("block_start") = 0, py::arg("scheduled"),
          py::arg("remasking") = "low_confidence_dynamic", py::arg("threshold") = 0.9, py::arg("temperature") = 0.0,
          py::arg("top_k") = 0, py::arg("top_p") = 1.0, py::arg("seed") = 0, py::arg("stream") = 0,
          "One unmasking step over device buffers (addresses as ints); enqueued, not synchronised.")
      .def(
          "wait_active_rows",
          [](UnmaskWorkspace& w, std::uintptr_t stream) { return w.wait_active_rows(reinterpret_cast<cudaStream_t>(stream)); },
          py::arg("stream") = 0)
      .def(
          "results",
          [](const UnmaskWorkspace& w, int rows) {
            const int L = w.limits().block_length;
            if (rows < 1 || rows > w.limits().max_batch) throw InvalidArgument("results: rows outside [1, max_batch]");
            const auto positions = static_cast<py::ssize_t>(rows) * L;
            py::array_t<std::int64_t> tokens(positions);
            py::array_t<double> conf(positions);
            py::array_t<std::uint8_t> done(rows);
            std::int32_t active = 0;
            SDAR_CUDA_CHECK(cudaDeviceSynchronize());
            SDAR_CUDA_CHECK(cudaMemcpy(tokens.mutable_data(), w.sampled_tokens(), sizeof(std::int64_t) * positions,
                                       cudaMemcpyDeviceToHost));
            SDAR_CUDA_CHECK(cudaMemcpy(conf.mutable_data(), w.confidences(), sizeof(double) * positions,
                                       cudaMemcpyDeviceToHost));
            SDAR_CUDA_CHECK(cudaMemcpy(done.mutable_data(), w.block_done(), static_cast<std::size_t>(rows),
                                       cudaMemcpyDeviceToHost));
            SDAR_CUDA_CHECK(cudaMemcpy(&active, w.active_rows(), sizeof(active), cudaMemcpyDeviceToHost));
            return py::make_tuple(tokens, conf, done, active);
          },
          py::arg("rows"),
          "(sampled tokens [rows*L] (-1: not sampled), confidences [rows*L], block_done [rows], active_rows).");
}

}  // namespace sdar::cuda
