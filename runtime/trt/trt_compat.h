// Whether an engine file can run here: TensorRT plans are tied to the GPU model / compute
// capability and to the TensorRT version that built them.
#pragma once

#include <string>

#include "trt_engine.h"

namespace sdar::trt {

struct DeviceInfo {
  std::string name;                // cudaDeviceProp::name
  std::string compute_capability;  // "major.minor"
  bool integrated = false;         // shares the board's RAM (Jetson)
};

// The current CUDA device; throws DeviceError without one.
DeviceInfo current_device();

// Throws EngineError naming what the engine was built for, what is running, and the fix.
// `runtime_version` is "X.Y.Z" of the loaded TensorRT library.
void check_compatible(const TrtPlanFile& plan, const DeviceInfo& device, const std::string& runtime_version);

}  // namespace sdar::trt
