// Loads a TensorRT plan from disk without a second full copy in host memory: the file is streamed
// to TensorRT's deserializer in pieces (IStreamReaderV2, TensorRT 10.7+), or mapped and read by
// TensorRT from the mapping (before 10.7), instead of being read whole into a buffer first. On Jetson the GPU shares that RAM, so a whole
// extra copy of the weights would cost as much as the model itself.
#pragma once

#include <NvInferRuntime.h>

#include <memory>
#include <string>

namespace sdar::trt {

// Deserialises the plan at `path` with `runtime`; nullptr when TensorRT refuses it (its logger
// has the reason). Throws EngineError when the file cannot be opened.
std::unique_ptr<nvinfer1::ICudaEngine> load_plan(nvinfer1::IRuntime& runtime, const std::string& path);

}  // namespace sdar::trt
