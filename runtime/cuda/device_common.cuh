// Device helpers shared by the unmasking kernels: element loads and warp/block reductions. The
// rules of a step (Philox, which positions it samples and fills) are step_rules.h's, shared with
// the CPU core.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>

namespace sdar::cuda::detail {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Elements per 16-byte load.
template <typename T>
struct Vec {
  static constexpr int kWidth = 16 / static_cast<int>(sizeof(T));
};

// Loads Vec<T>::kWidth elements from a 16-byte aligned address as floats.
template <typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[Vec<T>::kWidth]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const T* elements = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < Vec<T>::kWidth; ++k) out[k] = to_float(elements[k]);
}

// (value, index) with the CPU's tie rule: larger value wins, the lower index on equal values.
struct ArgMax {
  float value;
  int index;
};

__device__ __forceinline__ ArgMax better(ArgMax a, ArgMax b) {
  return (b.value > a.value || (b.value == a.value && b.index < a.index)) ? b : a;
}

__device__ __forceinline__ ArgMax warp_argmax(ArgMax x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    ArgMax other;
    other.value = __shfl_xor_sync(0xffffffffu, x.value, offset);
    other.index = __shfl_xor_sync(0xffffffffu, x.index, offset);
    x = better(x, other);
  }
  return x;
}

__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Block-wide reduction of one value per thread by the warp reduction `Warp`, whose neutral
// element is `identity`: every thread of the block must call it; all get the result. Each
// instantiation has its own shared memory, and the closing barrier lets the next call reuse it.
template <int THREADS, typename T, T (*Warp)(T)>
__device__ T block_reduce(T x, T identity) {
  static_assert(THREADS % 32 == 0 && THREADS <= 1024, "whole warps");
  __shared__ T warps[THREADS / 32];
  __shared__ T result;
  x = Warp(x);
  if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = x;
  __syncthreads();
  if (threadIdx.x < 32) {
    T y = threadIdx.x < THREADS / 32 ? warps[threadIdx.x] : identity;
    y = Warp(y);
    if (threadIdx.x == 0) result = y;
  }
  __syncthreads();
  return result;
}

template <int THREADS>
__device__ ArgMax block_argmax(ArgMax x) {
  return block_reduce<THREADS, ArgMax, warp_argmax>(x, ArgMax{-INFINITY, INT_MAX});
}

template <int THREADS>
__device__ double block_sum(double x) {
  return block_reduce<THREADS, double, warp_sum>(x, 0.0);
}

template <int THREADS>
__device__ float block_max(float x) {
  return block_reduce<THREADS, float, warp_max>(x, -INFINITY);
}

}  // namespace sdar::cuda::detail
