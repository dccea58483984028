#include "cpu_features.h"

#include "errors.h"

namespace sdar::cpu {

// Builds without a kernel source (CMake decides per architecture and compiler) get none of its table.
#ifndef SDAR_CPU_HAVE_AVX2
const KernelTable* avx2_kernels() { return nullptr; }
#endif
#ifndef SDAR_CPU_HAVE_AVX512VNNI
const KernelTable* avx512vnni_kernels() { return nullptr; }
#endif
#ifndef SDAR_CPU_HAVE_NEON
const KernelTable* neon_kernels() { return nullptr; }
#endif

namespace {

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool cpu_has_avx512vnni() {
  __builtin_cpu_init();
  return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#else
bool cpu_has_avx2_fma() { return false; }
bool cpu_has_avx512vnni() { return false; }
#endif

const KernelTable* table_if_runnable(const std::string& name) {
  if (name == "scalar") return &scalar_kernels();
  if (name == "avx2") return cpu_has_avx2_fma() ? avx2_kernels() : nullptr;
  if (name == "avx512vnni") return cpu_has_avx512vnni() ? avx512vnni_kernels() : nullptr;
  if (name == "neon") return neon_kernels();  // compiled only for AArch64, where NEON is mandatory
  return nullptr;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

std::vector<std::string> available_kernels() {
  std::vector<std::string> names;
  for (const char* name : {"avx512vnni", "avx2", "neon", "scalar"}) {
    if (table_if_runnable(name) != nullptr) names.emplace_back(name);
  }
  return names;
}

const KernelTable& select_kernels(const std::string& name) {
  if (name == "auto") return *table_if_runnable(available_kernels().front());
  if (name != "avx512vnni" && name != "avx2" && name != "neon" && name != "scalar") {
    throw InvalidArgument("unknown CPU kernels '" + name + "'; use 'auto', 'avx512vnni', 'avx2', 'neon' or 'scalar'");
  }
  const KernelTable* table = table_if_runnable(name);
  if (table == nullptr) {
    throw InvalidArgument("the '" + name + "' CPU kernels cannot run here (this CPU or this build lacks them); "
                          "available: " + joined(available_kernels()) + " (or 'auto')");
  }
  return *table;
}

}  // namespace sdar::cpu
