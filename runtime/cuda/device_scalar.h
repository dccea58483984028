// Writes one int64 into device memory in stream order. The value travels as a kernel argument,
// so no host staging buffer has to outlive the launch, and a CUDA graph that reads the scalar
// (e.g. TensorRT's past_len input) sees the value of the step that launched it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sdar::cuda {

void write_int64(std::int64_t* destination, std::int64_t value, cudaStream_t stream);

}  // namespace sdar::cuda
