#include "amx.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "errors.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define SDAR_AMX_X86 1
#endif
#if defined(SDAR_AMX_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sdar::cpu {

// Builds without the AMX source (CMake decides: x86-64 and a compiler that takes the flags).
#ifndef SDAR_CPU_HAVE_AMX
AmxQuantizedKernel amx_quantized_kernel() { return nullptr; }
#endif

namespace {

#ifdef SDAR_AMX_X86
bool cpu_reports_amx_int8() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(1, 0, eax, ebx, ecx, edx);
  if (((ecx >> 27) & 1u) == 0) return false;  // OSXSAVE: xgetbv may run
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool tile = (edx >> 24) & 1u;
  const bool int8 = (edx >> 25) & 1u;
  if (!tile || !int8) return false;
  unsigned xcr0_low = 0, xcr0_high = 0;
  // xgetbv by its encoding: the portable sources are built without -mxsave.
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
  constexpr unsigned kTileState = (1u << 17) | (1u << 18);  // XTILECFG, XTILEDATA
  return (xcr0_low & kTileState) == kTileState;
}

// Linux enables the tile data state per process, on request (since 5.16): without the permission
// the first tile instruction faults. Other systems: not supported here.
bool os_grants_amx() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif

bool detect_amx() {
#ifdef SDAR_AMX_X86
  if (amx_quantized_kernel() == nullptr) return false;
  __builtin_cpu_init();
  // The kernel's float steps and the weights' unpacking use AVX-512 F/BW/VL, as the avx512vnni table.
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vl")) {
    return false;
  }
  return cpu_reports_amx_int8() && os_grants_amx();
#else
  return false;
#endif
}

}  // namespace

bool amx_usable() {
  static const bool usable = detect_amx();  // once per process (thread-safe static)
  return usable;
}

bool amx_enabled_from_environment() {
  const char* value = std::getenv("SDAR_CPU_AMX");
  if (value == nullptr || *value == '\0' || std::string(value) == "1") return true;
  if (std::string(value) == "0") return false;
  throw InvalidArgument(std::string("SDAR_CPU_AMX='") + value +
                        "' is not a switch; set 0 (quantized matmuls never use AMX) or 1 (the default), or unset it");
}

namespace {

// Bytes of one thread's scratch parts (AmxScratch), each a multiple of 64.
std::size_t weight_bytes(int cols) { return static_cast<std::size_t>(kAmxStripColumns) * ((cols + 63) / 64 * 64); }
constexpr std::size_t kDotBytes = 2 * kAmxPassRows * kAmxStripColumns * sizeof(std::int32_t);
std::size_t acc_bytes(int rows) {
  return static_cast<std::size_t>((rows + kAmxPassRows - 1) / kAmxPassRows * kAmxPassRows) * kAmxStripColumns * sizeof(float);
}

}  // namespace

void AmxMatmul::reserve(int max_rows, int max_cols, int threads) {
  max_rows_ = std::max(max_rows, max_rows_);
  max_cols_ = std::max(max_cols, max_cols_);
  scratch_.reserve(weight_bytes(max_cols_) + kDotBytes + acc_bytes(max_rows_), threads);
}

AmxScratch AmxMatmul::scratch(const ThreadPool& pool) {
  std::uint8_t* slot = scratch_.slot(pool);
  const std::size_t weights = weight_bytes(max_cols_);
  return AmxScratch{slot, reinterpret_cast<std::int32_t*>(slot + weights), reinterpret_cast<float*>(slot + weights + kDotBytes)};
}

void AmxMatmul::quantized(ThreadPool& pool, const MatmulArgs& args) {
  reserve(args.a.row_capacity, args.w.cols, pool.size());  // a no-op once Matmul::reserve sized it
  const int strips = (args.w.panels() + kAmxStripPanels - 1) / kAmxStripPanels;
  pool.parallel_ranges(strips, [&](int, int begin, int end) { kernel_(args, begin, end, scratch(pool)); });
}

}  // namespace sdar::cpu
