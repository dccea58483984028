// y = x W^T over a kernel table and a thread pool: quantizes the activations once (quantized
// weights), splits W's panels over the pool, and runs every row of x against each panel.
#pragma once

#include <cstdint>
#include <vector>

#include "amx.h"
#include "gemm.h"
#include "kernels.h"
#include "thread_pool.h"
#include "thread_scratch.h"

namespace sdar::cpu {

// What quantized weights multiply: int8 activations per block (fast; ONNX Runtime's accuracy
// level 4), or the float activations against the dequantized weights (exact; export validation).
enum class Activations { Int8, Float };

// Activation block of a quantized matrix: the weight group, at most 128 values (the int16 sums of
// the AVX2 4-bit kernel hold 4 chunks of 32).
int activation_block(const PackedMatrix& w);

class Matmul {
 public:
  Matmul(const KernelTable& kernels, ThreadPool& pool);

  // Sizes the workspace for up to max_rows rows of up to max_cols values; the only allocation.
  void reserve(int max_rows, int max_cols);

  // y[rows][ldy] (columns [0, w.rows)) = x[rows][ldx] (w.cols values) times W^T.
  void operator()(const PackedMatrix& w, const float* x, int rows, int ldx, float* y, int ldy,
                  Activations activations = Activations::Int8);

  const KernelTable& kernels() const { return kernels_; }
  ThreadPool& pool() { return pool_; }

  // Matmuls of at least this many rows take the blocked paths (the same results): float32 weights the
  // GEMM (gemm.h), quantized weights the table's strips kernel where it has one (kernels.h) and the
  // AMX path is off; 0: never. Default: gemm_min_rows_from_environment(). Call reserve() after
  // changing it.
  int gemm_min_rows() const { return gemm_min_rows_; }
  void set_gemm_min_rows(int rows) { gemm_min_rows_ = rows; }

  // Whether int8-activation matmuls of this weight format and at least gemm_min_rows() rows take the
  // table's strips kernel (where the AMX path does not take them first).
  bool strips_for(WeightFormat format) const {
    return kernels_.quantized_strips != nullptr && gemm_min_rows_ > 0 &&
           (format == WeightFormat::Q4 || (format == WeightFormat::Q8 && kernels_.strips_take_q8));
  }

  // Whether quantized matmuls (int8 activations) of at least kAmxMinRows rows take the AMX path
  // (amx.h; the same results). Default: with the avx512vnni table where amx_usable() and
  // amx_enabled_from_environment(). set_amx(true) turns it on only where it can run; call reserve()
  // after changing it.
  bool amx() const { return amx_on_; }
  void set_amx(bool on) { amx_on_ = on && amx_available_; }

 private:
  // x's rows as the table's int8 activations (rows [rows, cap) zero) in this workspace.
  QuantizedRows quantize_rows(const PackedMatrix& w, const float* x, int rows, int ldx, int cap);

  const KernelTable& kernels_;
  ThreadPool& pool_;
  int max_rows_ = 0;
  int max_cols_ = 0;
  std::vector<MTile> tiles_;
  std::vector<float> xp_;
  std::vector<std::int8_t> q_;
  std::vector<std::int16_t> q16_;
  std::vector<float> scales_;
  std::vector<float> sums_;
  Gemm gemm_;
  ThreadScratch strip_scratch_;  // the quantized strips kernel's unpacked weights, per thread
  int gemm_min_rows_;
  bool amx_available_;  // this table, build, CPU and OS can run the AMX path
  bool amx_on_;
  AmxMatmul amx_;
};

}  // namespace sdar::cpu
