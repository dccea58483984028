#include "cpu_features.h"

#include "errors.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace sdar::cpu {

// Builds without a kernel source (CMake decides per architecture and compiler) get none of its table.
#ifndef SDAR_CPU_HAVE_AVX2
const KernelTable* avx2_kernels() { return nullptr; }
#endif
#ifndef SDAR_CPU_HAVE_AVX512VNNI
const KernelTable* avx512vnni_kernels() { return nullptr; }
#endif
#ifndef SDAR_CPU_HAVE_AVXVNNI
const KernelTable* avxvnni_kernels() { return nullptr; }
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
// AVX-VNNI: CPUID leaf 7 sub-leaf 1, EAX bit 4 (read directly: older compilers' __builtin_cpu_supports
// lacks the name). The OS's saving of the 256-bit registers is part of the AVX2 check.
bool cpu_has_avxvnni() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!cpu_has_avx2_fma() || __get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  if (eax < 1) return false;  // no sub-leaf 1
  __cpuid_count(7, 1, eax, ebx, ecx, edx);
  return (eax >> 4) & 1u;
}
#else
bool cpu_has_avx2_fma() { return false; }
bool cpu_has_avx512vnni() { return false; }
bool cpu_has_avxvnni() { return false; }
#endif

const KernelTable* table_if_runnable(const std::string& name) {
  if (name == "scalar") return &scalar_kernels();
  if (name == "avx2") return cpu_has_avx2_fma() ? avx2_kernels() : nullptr;
  if (name == "avx512vnni") return cpu_has_avx512vnni() ? avx512vnni_kernels() : nullptr;
  if (name == "avxvnni") return cpu_has_avxvnni() ? avxvnni_kernels() : nullptr;
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
  for (const char* name : {"avx512vnni", "avxvnni", "avx2", "neon", "scalar"}) {
    if (table_if_runnable(name) != nullptr) names.emplace_back(name);
  }
  return names;
}

const KernelTable& select_kernels(const std::string& name) {
  if (name == "auto") return *table_if_runnable(available_kernels().front());
  if (name != "avx512vnni" && name != "avxvnni" && name != "avx2" && name != "neon" && name != "scalar") {
    throw InvalidArgument("unknown CPU kernels '" + name + "'; use 'auto', 'avx512vnni', 'avxvnni', 'avx2', 'neon' or 'scalar'");
  }
  const KernelTable* table = table_if_runnable(name);
  if (table == nullptr) {
    throw InvalidArgument("the '" + name + "' CPU kernels cannot run here (this CPU or this build lacks them); "
                          "available: " + joined(available_kernels()) + " (or 'auto')");
  }
  return *table;
}

}  // namespace sdar::cpu
