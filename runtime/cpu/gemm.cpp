#include "gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "errors.h"

namespace sdar::cpu {

// Builds without a microkernel source (CMake decides per architecture, as for the kernel tables).
#ifndef SDAR_CPU_HAVE_AVX2_GEMM
const GemmKernels* avx2_gemm() { return nullptr; }
#endif
#ifndef SDAR_CPU_HAVE_AVX512F_GEMM
const GemmKernels* avx512_gemm() { return nullptr; }
#endif
#ifndef SDAR_CPU_HAVE_NEON
const GemmKernels* neon_gemm() { return nullptr; }
#endif

#if defined(__x86_64__) || defined(__i386__)
namespace {
bool cpu_has_avx2_fma() {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}
bool cpu_has_avx512f() {
#if defined(__GNUC__) || defined(__clang__)
  return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}
}  // namespace
#endif

const GemmKernels& gemm_kernels_for(const KernelTable& table) {
  // Every x86 table but the portable one runs on AVX2 + FMA CPUs only (the AVX-512 and AVX-VNNI
  // tables include them), so those take the AVX2 microkernels; the AVX-512 VNNI table's CPUs also
  // have AVX-512 F, all that the AVX-512 microkernels add. The CPU checks keep that true for any
  // table added later.
  if (std::strcmp(table.name, "scalar") == 0) return scalar_gemm();
  if (std::strcmp(table.name, "neon") == 0 && neon_gemm() != nullptr) return *neon_gemm();
#if defined(__x86_64__) || defined(__i386__)
  if (std::strcmp(table.name, "avx512vnni") == 0 && avx512_gemm() != nullptr && cpu_has_avx512f()) {
    return *avx512_gemm();
  }
  if (avx2_gemm() != nullptr && cpu_has_avx2_fma()) return *avx2_gemm();
#endif
  return scalar_gemm();
}

int gemm_min_rows_from_environment() {
  const char* value = std::getenv("SDAR_CPU_GEMM_MIN_ROWS");
  if (value == nullptr || *value == '\0') return kGemmDefaultMinRows;
  char* end = nullptr;
  const long rows = std::strtol(value, &end, 10);
  if (*end != '\0' || rows < 0 || rows > 1 << 30) {
    throw InvalidArgument(std::string("SDAR_CPU_GEMM_MIN_ROWS='") + value +
                          "' is not a row count; set a non-negative integer (0 turns the blocked paths for many rows off) or unset it");
  }
  return static_cast<int>(rows);
}

namespace {

int ceil_div(int n, int d) { return (n + d - 1) / d; }

// Packed x: block b of K (kGemmDepth values, the last one shorter), tile t (tile_rows rows), value
// k of the block, row r of the tile at packed + b * kGemmDepth * padded_rows + (t * depth_b + k) * tile_rows + r,
// where depth_b is the block's depth and padded_rows the rows rounded up to whole tiles.
struct PackedX {
  float* data;
  int tile_rows;
  int padded_rows;
  int K;
  float* tile(int block, int t) const {
    const int depth = std::min(kGemmDepth, K - block * kGemmDepth);
    return data + static_cast<std::size_t>(block) * kGemmDepth * padded_rows +
           static_cast<std::size_t>(t) * depth * tile_rows;
  }
};

void pack_tile(const PackedX& p, const float* x, int rows, int ldx, int t) {
  const int T = p.tile_rows;
  for (int b = 0; b < ceil_div(p.K, kGemmDepth); ++b) {
    const int k0 = b * kGemmDepth;
    const int depth = std::min(kGemmDepth, p.K - k0);
    float* out = p.tile(b, t);
    for (int r = 0; r < T; ++r) {
      const int m = t * T + r;
      if (m >= rows) {
        for (int k = 0; k < depth; ++k) out[k * T + r] = 0.0f;
        continue;
      }
      const float* xr = x + static_cast<std::size_t>(m) * ldx + k0;
      for (int k = 0; k < depth; ++k) out[k * T + r] = xr[k];
    }
  }
}

}  // namespace

void Gemm::reserve(int max_rows, int max_cols) {
  const std::size_t want = static_cast<std::size_t>(ceil_div(max_rows, kernels_.tile_rows)) * kernels_.tile_rows *
                           static_cast<std::size_t>(max_cols);
  if (want > packed_.size()) packed_.assign(want, 0.0f);
}

void Gemm::f32(ThreadPool& pool, const PackedMatrix& w, const float* x, int rows, int ldx, float* y, int ldy) {
  reserve(rows, w.cols);  // a no-op once Matmul::reserve sized it
  const int T = kernels_.tile_rows;
  const int K = w.cols;
  const int tiles = ceil_div(rows, T);
  const PackedX p{packed_.data(), T, tiles * T, K};
  pool.parallel_ranges(tiles, [&](int, int begin, int end) {
    for (int t = begin; t < end; ++t) pack_tile(p, x, rows, ldx, t);
  });

  // Output columns go in strips of tile_panels panels (the microkernel's width; the last strip may
  // be narrower), and the threads split the strips.
  const int panels = w.panels();
  const int strip_panels = kernels_.tile_panels;
  const int strips = ceil_div(panels, strip_panels);
  const int blocks = ceil_div(K, kGemmDepth);
  const int group_tiles = std::max(1, kGemmGroupRows / T);
  const auto* weights = static_cast<const float*>(w.data);
  const long panel_stride = static_cast<long>(K) * kPanel;
  pool.parallel_ranges(strips, [&](int, int strip_begin, int strip_end) {
    for (int b = 0; b < blocks; ++b) {
      const int k0 = b * kGemmDepth;
      const int depth = std::min(kGemmDepth, K - k0);
      for (int g = 0; g < tiles; g += group_tiles) {
        const int group_end = std::min(tiles, g + group_tiles);
        for (int s = strip_begin; s < strip_end; ++s) {
          const int p0 = s * strip_panels;
          const float* ws = weights + (static_cast<std::size_t>(p0) * K + k0) * kPanel;
          const int cols = std::min(strip_panels * kPanel, w.rows - p0 * kPanel);
          for (int t = g; t < group_end; ++t) {
            kernels_.f32_tile(p.tile(b, t), ws, panel_stride, depth,
                              y + static_cast<std::size_t>(t) * T * ldy + p0 * kPanel, ldy, std::min(T, rows - t * T),
                              cols, b > 0);
          }
        }
      }
    }
  });
}

}  // namespace sdar::cpu
