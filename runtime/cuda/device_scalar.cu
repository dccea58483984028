#include "cuda/cuda_check.h"
#include "device_scalar.h"

namespace sdar::cuda {

namespace {
__global__ void write_int64_kernel(std::int64_t* destination, std::int64_t value) { *destination = value; }
}  // namespace

void write_int64(std::int64_t* destination, std::int64_t value, cudaStream_t stream) {
  write_int64_kernel<<<1, 1, 0, stream>>>(destination, value);
  check_launch("write_int64_kernel");
}

}  // namespace sdar::cuda
