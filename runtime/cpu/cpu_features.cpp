#include "cpu_features.h"

#include <algorithm>
#include <cstddef>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

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
#ifndef SDAR_CPU_HAVE_DOTPROD
const KernelTable* dotprod_kernels() { return nullptr; }
#endif
#ifndef SDAR_CPU_HAVE_I8MM
const KernelTable* i8mm_kernels() { return nullptr; }
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

// Arm's optional int8 instructions: FEAT_DotProd (sdot/udot; Armv8.2 and later cores: Cortex-A76/A78,
// Neoverse N1, Apple M1) and FEAT_I8MM (smmla/usmmla/usdot; Armv8.6: Neoverse V1/N2, Apple M2). The
// kernel sources using them are only compiled for AArch64; these answer false elsewhere.
#if defined(__aarch64__) && defined(__linux__)
// The bits of the kernel's hwcap words (<asm/hwcap.h>), for C libraries whose headers predate them.
constexpr unsigned long kHwcapAsimdDp = 1UL << 20;  // HWCAP_ASIMDDP
constexpr unsigned long kHwcap2I8mm = 1UL << 13;    // HWCAP2_I8MM
bool cpu_has_dotprod() { return (getauxval(AT_HWCAP) & kHwcapAsimdDp) != 0; }
bool cpu_has_i8mm() { return cpu_has_dotprod() && (getauxval(AT_HWCAP2) & kHwcap2I8mm) != 0; }
#elif defined(__aarch64__) && defined(__APPLE__)
bool sysctl_flag(const char* name) {
  int value = 0;
  std::size_t size = sizeof(value);
  return sysctlbyname(name, &value, &size, nullptr, 0) == 0 && value != 0;
}
bool cpu_has_dotprod() { return sysctl_flag("hw.optional.arm.FEAT_DotProd"); }
bool cpu_has_i8mm() { return cpu_has_dotprod() && sysctl_flag("hw.optional.arm.FEAT_I8MM"); }
#else
bool cpu_has_dotprod() { return false; }
bool cpu_has_i8mm() { return false; }
#endif

const KernelTable* table_if_runnable(const std::string& name) {
  if (name == "scalar") return &scalar_kernels();
  if (name == "avx2") return cpu_has_avx2_fma() ? avx2_kernels() : nullptr;
  if (name == "avx512vnni") return cpu_has_avx512vnni() ? avx512vnni_kernels() : nullptr;
  if (name == "avxvnni") return cpu_has_avxvnni() ? avxvnni_kernels() : nullptr;
  if (name == "neon") return neon_kernels();  // compiled only for AArch64, where NEON is mandatory
  if (name == "dotprod") return cpu_has_dotprod() ? dotprod_kernels() : nullptr;
  if (name == "i8mm") return cpu_has_i8mm() ? i8mm_kernels() : nullptr;
  return nullptr;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

// Every table name, fastest first ("scalar" last): the order "auto" picks in.
static const std::vector<std::string>& all_kernel_names() {
  static const std::vector<std::string> names{"avx512vnni", "avxvnni", "avx2", "i8mm", "dotprod", "neon", "scalar"};
  return names;
}

std::vector<std::string> available_kernels() {
  std::vector<std::string> names;
  for (const auto& name : all_kernel_names()) {
    if (table_if_runnable(name) != nullptr) names.push_back(name);
  }
  return names;
}

const KernelTable& select_kernels(const std::string& name) {
  if (name == "auto") return *table_if_runnable(available_kernels().front());
  const auto& known = all_kernel_names();
  if (std::find(known.begin(), known.end(), name) == known.end()) {
    throw InvalidArgument("unknown CPU kernels '" + name + "'; use 'auto' or one of: " + joined(known));
  }
  const KernelTable* table = table_if_runnable(name);
  if (table == nullptr) {
    throw InvalidArgument("the '" + name + "' CPU kernels cannot run here (this CPU or this build lacks them); "
                          "available: " + joined(available_kernels()) + " (or 'auto')");
  }
  return *table;
}

}  // namespace sdar::cpu
