// Device Philox uniforms (tests only): out[i] = philox_uniform(seed, counters[3i], counters[3i+1],
// counters[3i+2]) computed by the kernels' device code. Device pointers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sdar::cuda {

void philox_uniforms(std::uint64_t seed, const std::uint32_t* counters, int count, double* out, cudaStream_t stream);

}  // namespace sdar::cuda
