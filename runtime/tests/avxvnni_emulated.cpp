// The AVX-VNNI table's source built for AVX2, its vpdpbusd replaced by the same exact sums from
// AVX2 instructions (kernels_x86.inl, SDAR_X86_DPBUSD_EMULATED): so that every other line of that
// table (tiling, transposes, activation layout, float steps) is tested on CPUs without AVX-VNNI.
// The instruction itself is only tested where the CPU has it (the "avxvnni" table).
#define SDAR_X86_VNNI 2
#define SDAR_X86_DPBUSD_EMULATED 1
#include "kernels_x86.inl"

namespace sdar::cpu {

const KernelTable* emulated_avxvnni_kernels() {
  static const KernelTable table{"avxvnni-emulated", f32_kernel, quantized_kernel, dequantized_kernel, quantize_kernel,
                                 false, true, kVectorKernels, quantized_strips_kernel};
  return &table;
}

}  // namespace sdar::cpu
