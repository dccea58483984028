// The dot-product table (AArch64 with FEAT_DotProd: Cortex-A76/A78 such as the Jetson Orin's,
// Neoverse N1, Apple M1), compiled with -march=armv8.2-a+dotprod and used only when the CPU reports
// it (cpu_features.cpp). Its quantized kernel is quantized_sdot.inl's; float32 weights, the
// activations' quantization (the plain run-major layout) and the rest are the NEON table's.
#include "quantized_sdot.inl"

namespace sdar::cpu {

const KernelTable* dotprod_kernels() {
  const KernelTable& neon = *neon_kernels();
  static const KernelTable table{"dotprod", neon.f32, sdot_quantized_kernel, neon.dequantized, neon.quantize,
                                 false, false, neon.vec};
  return &table;
}

}  // namespace sdar::cpu
