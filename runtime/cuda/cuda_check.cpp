#include "cuda_check.h"

namespace sdar::cuda {

namespace {
std::string runtime_version() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
}

std::string hint(cudaError_t status) {
  switch (status) {
    case cudaErrorNoDevice:
      return std::string("no CUDA GPU is visible to this process (check the driver, nvidia-smi / tegrastats, and "
             "CUDA_VISIBLE_DEVICES); use the CPU engine (ort) instead");
    case cudaErrorInsufficientDriver:
      return "the NVIDIA driver is older than the CUDA runtime sdar_rt was built with (CUDA " + runtime_version() +
             "); update the driver (JetPack) or rebuild sdar_rt against the CUDA toolkit that matches it";
    case cudaErrorMemoryAllocation:
      return std::string("out of device memory: lower max_context or batch at export time, or free GPU memory "
             "(on Jetson the GPU shares RAM with the CPU)");
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
      return std::string("sdar_rt was not compiled for this GPU's architecture: rebuild with "
             "CMAKE_CUDA_ARCHITECTURES set to this GPU's compute capability (87 for Jetson Orin)");
    default:
      return {};
  }
}
}  // namespace

std::string describe(cudaError_t status, const char* what) {
  std::string message = std::string(what) + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")";
  const std::string fix = hint(status);
  if (!fix.empty()) message += "; " + fix;
  return message;
}

void throw_error(cudaError_t status, const char* what) { throw DeviceError(describe(status, what), status); }

void check_launch(const char* kernel) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) throw_error(status, kernel);
#ifndef NDEBUG
  // Debug builds: wait for the kernel, so a fault is reported at the launch that caused it
  // rather than at the step's next sync.
  const cudaError_t finished = cudaDeviceSynchronize();
  if (finished != cudaSuccess) throw_error(finished, kernel);
#endif
}

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the non-sticky error so later checks do not report it
    return 0;
  }
  return count;
}

void require_device() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    int driver = 0;
    if (cudaDriverGetVersion(&driver) == cudaSuccess && driver == 0) {
      // cudart reports a missing driver as "insufficient driver"; say what is really wrong.
      throw DeviceError("looking for a CUDA GPU: no NVIDIA driver is installed (libcuda.so not found), so no CUDA "
                        "GPU is usable here; use the CPU engine (ort) instead",
                        status);
    }
    if (status == cudaErrorInsufficientDriver) {
      throw DeviceError(describe(status, "looking for a CUDA GPU") + " (the driver supports CUDA " +
                            std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) + ")",
                        status);
    }
    throw_error(status, "looking for a CUDA GPU");
  }
  if (count == 0) throw_error(cudaErrorNoDevice, "looking for a CUDA GPU");
}

}  // namespace sdar::cuda
