#include "trt_compat.h"

#include "cuda/cuda_check.h"
#include "errors.h"

namespace sdar::trt {

namespace {
const char* kFix = "rebuild the plan on this device with: sdar-export ARTIFACT --engine trt";

// "10.3.0.26" -> "10.3.0": the build number does not change plan compatibility.
std::string major_minor_patch(const std::string& version) {
  std::size_t end = 0;
  for (int dots = 0; end < version.size(); ++end) {
    if (version[end] == '.' && ++dots == 3) break;
  }
  return version.substr(0, end);
}
}  // namespace

DeviceInfo current_device() {
  cuda::require_device();
  int device = 0;
  SDAR_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  SDAR_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return {prop.name, std::to_string(prop.major) + "." + std::to_string(prop.minor), prop.integrated != 0};
}

void check_compatible(const TrtPlanFile& file, const DeviceInfo& device, const std::string& runtime_version) {
  const std::string engine = "TensorRT plan " + file.path;
  if (!file.compute_capability.empty() && file.compute_capability != device.compute_capability) {
    throw EngineError(engine + " was built for " + file.gpu + " (compute capability " + file.compute_capability +
                      ") but this GPU is " + device.name + " (compute capability " + device.compute_capability +
                      "); " + kFix);
  }
  if (!file.gpu.empty() && file.gpu != device.name) {
    throw EngineError(engine + " was built on a " + file.gpu + " but this GPU is a " + device.name +
                      " (TensorRT plans are tuned for, and tied to, one GPU model); " + kFix);
  }
  if (!file.tensorrt.empty() && major_minor_patch(file.tensorrt) != major_minor_patch(runtime_version)) {
    throw EngineError(engine + " was built with TensorRT " + file.tensorrt + " but TensorRT " + runtime_version +
                      " is installed (plans only load in the version that built them); " + kFix);
  }
}

}  // namespace sdar::trt
