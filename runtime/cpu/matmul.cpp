#include "matmul.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "errors.h"

namespace sdar::cpu {
namespace {

int round_up(int n, int m) { return (n + m - 1) / m * m; }

// Tiles of `widest` (4 or 8) rows, then one tile for the rest, rounded up to 1, 2, 4 or 8 (its
// extra rows are computed on zero padding and dropped). Quantized weights use tiles of 8, so a
// panel's codes are decoded once per 8 rows; float32 weights tiles of 4 (measured: the outer-product
// kernel runs more multiply-adds per cycle on 4 rows, and a panel read again is in cache).
int make_tiles(int rows, int widest, MTile* tiles) {
  int n = 0;
  for (int first = 0; first < rows; first += widest) {
    const int left = rows - first;
    int width = widest;
    if (left < widest) width = left <= 1 ? 1 : left <= 2 ? 2 : left <= 4 ? 4 : 8;
    tiles[n++] = MTile{first, width};
  }
  return n;
}

// x [rows][ldx] -> [ceil(cols / 8)][cap][8], zero past rows and cols (MatmulArgs::xp).
void panelize(const float* x, int rows, int ldx, int cols, int cap, float* out) {
  const int steps = (cols + kF32Step - 1) / kF32Step;
  for (int s = 0; s < steps; ++s) {
    for (int m = 0; m < cap; ++m) {
      float* o = out + (static_cast<std::size_t>(s) * cap + m) * kF32Step;
      for (int l = 0; l < kF32Step; ++l) {
        const int k = s * kF32Step + l;
        o[l] = m < rows && k < cols ? x[static_cast<std::size_t>(m) * ldx + k] : 0.0f;
      }
    }
  }
}

}  // namespace

int activation_block(const PackedMatrix& w) { return std::min(w.group, 128); }

namespace {

// A thread's scratch for the strips kernel (kernels.h): the widest strip's codes for K = cols.
std::size_t strip_bytes(int cols) { return static_cast<std::size_t>(kMaxStripPanels) * kPanel * round_up(cols, 64); }

// The AMX kernel reads the avx512vnni table's activation layout (runs of 64 codes); every AMX CPU has
// that table.
bool amx_available_for(const KernelTable& kernels) {
  return std::strcmp(kernels.name, "avx512vnni") == 0 && amx_usable();
}

}  // namespace

Matmul::Matmul(const KernelTable& kernels, ThreadPool& pool)
    : kernels_(kernels),
      pool_(pool),
      gemm_(gemm_kernels_for(kernels)),
      gemm_min_rows_(gemm_min_rows_from_environment()),
      amx_available_(amx_available_for(kernels)),
      amx_on_(amx_enabled_from_environment() && amx_available_),  // the setting is checked on every machine
      amx_(amx_quantized_kernel()) {}

void Matmul::reserve(int max_rows, int max_cols) {
  if (gemm_min_rows_ > 0 && std::max(max_rows, max_rows_) >= gemm_min_rows_) {
    gemm_.reserve(std::max(max_rows, max_rows_), std::max(max_cols, max_cols_));
  }
  if (amx_on_ && std::max(max_rows, max_rows_) >= kAmxMinRows) {
    amx_.reserve(round_up(std::max(max_rows, max_rows_), kAmxPassRows), std::max(max_cols, max_cols_), pool_.size());
  }
  if (strips_for(WeightFormat::Q4) && std::max(max_rows, max_rows_) >= gemm_min_rows_) {
    strip_scratch_.reserve(strip_bytes(std::max(max_cols, max_cols_)), pool_.size());
  }
  if (max_rows <= max_rows_ && max_cols <= max_cols_) return;
  max_rows_ = std::max(max_rows, max_rows_);
  max_cols_ = std::max(max_cols, max_cols_);
  // Rows rounded up to 32, not just 8: the AMX path reads the activations in passes of 32 rows.
  const std::size_t cap = static_cast<std::size_t>(round_up(max_rows_, kAmxPassRows));
  tiles_.assign(cap / 4 + 1, MTile{});
  if (kernels_.wants_panel_x) xp_.assign(cap * ((max_cols_ + kF32Step - 1) / kF32Step * kF32Step), 0.0f);
  q_.assign(cap * static_cast<std::size_t>(round_up(max_cols_, 64)), 0);  // runs of up to 64 codes
  if (kernels_.wants_q16) q16_.assign(cap * max_cols_, 0);
  scales_.assign(cap * (max_cols_ / 32 + 1), 0.0f);
  sums_.assign(scales_.size(), 0.0f);
}

QuantizedRows Matmul::quantize_rows(const PackedMatrix& w, const float* x, int rows, int ldx, int cap) {
  const int block = activation_block(w);
  std::int16_t* q16 = kernels_.wants_q16 ? q16_.data() : nullptr;
  kernels_.quantize(x, rows, ldx, w.cols, block, cap, q_.data(), q16, scales_.data(), sums_.data());
  return QuantizedRows{q_.data(), q16, scales_.data(), sums_.data(), cap, block};
}

void Matmul::operator()(const PackedMatrix& w, const float* x, int rows, int ldx, float* y, int ldy,
                        Activations activations) {
  if (rows <= 0) return;
  if (rows > max_rows_ || w.cols > max_cols_) {
    throw EngineError("matmul of " + std::to_string(rows) + " x " + std::to_string(w.cols) +
                      " exceeds the reserved workspace (" + std::to_string(max_rows_) + " x " +
                      std::to_string(max_cols_) + ")");
  }
  if (w.format == WeightFormat::F32 && gemm_min_rows_ > 0 && rows >= gemm_min_rows_) {
    gemm_.f32(pool_, w, x, rows, ldx, y, ldy);
    return;
  }
  const bool int8_activations = w.format != WeightFormat::F32 && activations == Activations::Int8;
  const bool amx = int8_activations && amx_on_ && rows >= kAmxMinRows;
  if (amx || (int8_activations && strips_for(w.format) && rows >= gemm_min_rows_)) {
    MatmulArgs args;
    args.w = w;
    args.rows = rows;
    args.y = y;
    args.ldy = ldy;
    // The AMX kernel reads whole passes of 32 rows.
    args.a = quantize_rows(w, x, rows, ldx, round_up(rows, amx ? kAmxPassRows : 8));
    if (amx) {
      amx_.quantized(pool_, args);
    } else {
      strip_scratch_.reserve(strip_bytes(w.cols), pool_.size());  // a no-op once reserve() sized it
      pool_.parallel_ranges(w.panels(), [&](int, int begin, int end) {
        kernels_.quantized_strips(args, begin, end, strip_scratch_.slot(pool_));
      });
    }
    return;
  }
  MatmulArgs args;
  args.w = w;
  args.x = x;
  args.ldx = ldx;
  args.rows = rows;
  args.y = y;
  args.ldy = ldy;
  args.tiles = tiles_.data();
  args.num_tiles = make_tiles(rows, w.format == WeightFormat::F32 ? 4 : 8, tiles_.data());
  const int cap = round_up(rows, 8);
  args.row_capacity = cap;
  const bool float_activations = w.format == WeightFormat::F32 || activations == Activations::Float;
  if (float_activations && kernels_.wants_panel_x) {
    panelize(x, rows, ldx, w.cols, cap, xp_.data());
    args.xp = xp_.data();
  }
  PanelKernel kernel = kernels_.f32;
  if (w.format != WeightFormat::F32) {
    if (activations == Activations::Float) {
      kernel = kernels_.dequantized;
    } else {
      kernel = kernels_.quantized;
      args.a = quantize_rows(w, x, rows, ldx, cap);
    }
  }
  pool_.parallel_ranges(w.panels(), [&](int, int begin, int end) { kernel(args, begin, end); });
}

}  // namespace sdar::cpu
