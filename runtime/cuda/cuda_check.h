// CUDA status -> sdar exceptions. The core never aborts, so every CUDA call and kernel launch in
// sdar_rt goes through these checks and turns a failure into a DeviceError whose message names the
// call, the CUDA error and, for the failures users hit in practice, the fix.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "errors.h"

namespace sdar::cuda {

// A CUDA device is missing, unusable or failed (no GPU, driver too old, out of device memory,
// a kernel fault). Python sees it as sdar_rt._core.SdarError (a RuntimeError).
class DeviceError : public Error {
 public:
  DeviceError(const std::string& what, cudaError_t status) : Error(what), status_(status) {}
  cudaError_t status() const { return status_; }

 private:
  cudaError_t status_;
};

// "<what>: <cudaErrorName> (<description>)[; <hint>]".
std::string describe(cudaError_t status, const char* what);

[[noreturn]] void throw_error(cudaError_t status, const char* what);

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw_error(status, what);
}

// After a kernel launch: launch-configuration errors are only reported by cudaGetLastError.
// Debug builds (no NDEBUG) also synchronise, so execution faults surface at their launch.
void check_launch(const char* kernel);

// Number of usable CUDA devices; 0 (never an exception) when there is no GPU or no driver.
int device_count() noexcept;

// Throws DeviceError with a clear message when no usable GPU is present.
void require_device();

}  // namespace sdar::cuda

#define SDAR_CUDA_CHECK(expr) ::sdar::cuda::check((expr), #expr)
