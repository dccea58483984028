// Device Philox uniforms for the GPU tests: step_rules.h's philox_uniform compiled for the device,
// compared with the host's bit for bit, not only through sampled tokens.
#include "cuda/cuda_check.h"
#include "philox_check.h"
#include "step_rules.h"

namespace sdar::cuda {

namespace {
__global__ void philox_kernel(std::uint64_t seed, const std::uint32_t* counters, int count, double* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) out[i] = rules::philox_uniform(seed, counters[3 * i], counters[3 * i + 1], counters[3 * i + 2]);
}
}  // namespace

void philox_uniforms(std::uint64_t seed, const std::uint32_t* counters, int count, double* out, cudaStream_t stream) {
  if (count <= 0) return;
  philox_kernel<<<(count + 127) / 128, 128, 0, stream>>>(seed, counters, count, out);
  check_launch("philox_kernel");
}

}  // namespace sdar::cuda
