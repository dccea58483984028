// AVX2 + FMA kernels (x86-64), compiled with -mavx2 -mfma and used only when the CPU reports both.
#define SDAR_X86_VNNI 0
#include "kernels_x86.inl"

namespace sdar::cpu {

const KernelTable* avx2_kernels() {
  static const KernelTable table{"avx2", f32_kernel, quantized_kernel, dequantized_kernel, quantize_kernel, true, true,
                                 kVectorKernels, quantized_strips_kernel, false};
  return &table;
}

}  // namespace sdar::cpu
