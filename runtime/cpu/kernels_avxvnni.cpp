// AVX-VNNI kernels (x86-64: the 256-bit VEX vpdpbusd of Intel Alder Lake and later client CPUs,
// which have no AVX-512), compiled with -mavx2 -mfma -mavxvnni and used only when the CPU reports
// AVX2, FMA and AVX-VNNI. The AVX2 table's kernels with vpdpbusd as the integer dot step
// (kernels_x86.inl, SDAR_X86_VNNI 2): 8-bit codes need no int16 detour, so it reads no q16.
#define SDAR_X86_VNNI 2
#include "kernels_x86.inl"

namespace sdar::cpu {

const KernelTable* avxvnni_kernels() {
  static const KernelTable table{"avxvnni", f32_kernel, quantized_kernel, dequantized_kernel, quantize_kernel, false, true,
                                 kVectorKernels, quantized_strips_kernel};
  return &table;
}

}  // namespace sdar::cpu
