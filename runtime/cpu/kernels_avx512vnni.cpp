// AVX-512 VNNI kernels on 256-bit vectors (x86-64: Ice Lake and later Intel, Zen 4 and later AMD),
// compiled with AVX2, FMA and AVX-512 F/BW/VL/VNNI flags; used only when the CPU reports all of them.
// 256-bit vectors keep the AVX2 kernels' tiling; vpdpbusd replaces the multiply-add chain.
#define SDAR_X86_VNNI 1
// GCC's own AVX-512 insert / extract / shuffle intrinsics start from an undefined vector and trip
// -Wmaybe-uninitialized inside its header (a false positive: every lane is written).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernels_x86.inl"

namespace sdar::cpu {

const KernelTable* avx512vnni_kernels() {
  static const KernelTable table{"avx512vnni", f32_kernel, quantized_kernel, dequantized_kernel, quantize_kernel, false, true,
                                 kVectorKernels, quantized_strips_kernel};
  return &table;
}

}  // namespace sdar::cpu
