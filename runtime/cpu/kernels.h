// The matmul kernels of the native CPU engine, one table per instruction set.
//
// y[M, N] = x[M, K] W^T for a PackedMatrix W, M small (the rows of one step: 1 for AR decoding, L
// for a block, 2L for a fused step). Each kernel call covers a range of 8-row panels of W for all
// M rows, so each weight is read from memory once per call whatever M is: the rows of x are
// processed in tiles of 1, 2, 4 or 8 (MTile) while the panel's weights are hot in cache, and the
// 8 results of a tile x panel-slice form one vector.
//
// Quantized weights run against int8 activations (one scale per block of `block` <= 128 values of
// a row: the scheme ONNX Runtime's MatMulNBits uses at accuracy level 4): integer dot products per
// block, then y += scale_w * scale_x * dot - zero_point * scale_w * scale_x * sum(codes). Every
// kernel table does that float arithmetic in the same order with fused multiply-adds, so all of
// them return bit-identical results for quantized weights. The `dequantized` kernels compute with
// float activations instead (the weights expanded to (u - z) * scale): export validation uses them
// to check the packing at the float tolerance.
//
// Kernel sources are compiled with their instruction set's flags, so they include nothing but
// this header and the intrinsics headers: no inline code from the C++ library can be emitted there
// with instructions the running CPU may lack.
#pragma once

#include <cstddef>
#include <cstdint>

#include "packed_matrix.h"

namespace sdar::cpu {

// A run of rows of x handled together: rows [first, first + width), width 1, 2, 4 or 8. Rows of a
// tile past the matrix's M are computed on zero padding (or, reading x itself, repeat a valid row)
// and never stored.
struct MTile {
  int first = 0;
  int width = 1;
};

// int8 activations, as a table's quantize kernel writes them for its own kernels. Run-major, so
// the rows of a tile are at fixed offsets from one pointer: runs of R codes (R = 32, or 64 for the
// AVX-512 VNNI table) of row m at ((c / R) * cap + m) * R, c the first code of the run.
struct QuantizedRows {
  const std::int8_t* q = nullptr;     // [ceil(cols / R)][row_capacity][R] codes in [-127, 127]; rows >= M are zero
  const std::int16_t* q16 = nullptr;  // the codes as int16 in runs of 32 (tables with wants_q16), else null
  const float* scales = nullptr;      // [cols / block][row_capacity]: max|x| / 127 of the block
  const float* sums = nullptr;        // [cols / block][row_capacity]: scale * sum of the block's codes
  int row_capacity = 0;               // a multiple of 8, >= M
  int block = 0;                      // values per activation scale: a multiple of 32 dividing the weight group
};

struct MatmulArgs {
  PackedMatrix w;
  const float* x = nullptr;   // float activations [M][ldx]
  int ldx = 0;
  // The float activations by steps of 8 (tables with wants_panel_x): [ceil(cols / 8)][row_capacity][8],
  // step s of row m at (s * cap + m) * 8, zero past M and past cols.
  const float* xp = nullptr;
  int row_capacity = 0;
  QuantizedRows a;            // int8 activations (quantized kernels)
  const MTile* tiles = nullptr;
  int num_tiles = 0;
  int rows = 0;               // M
  float* y = nullptr;         // [M][ldy]; columns [0, w.rows) are written
  int ldy = 0;
};

// Computes the output columns of panels [panel_begin, panel_end) for every row.
using PanelKernel = void (*)(const MatmulArgs& args, int panel_begin, int panel_end);
// Quantizes x [rows][ldx] (cols values per row) into int8 codes per block, in the layout of
// QuantizedRows (rows [rows, row_capacity) zero); q16 may be null.
using QuantizeKernel = void (*)(const float* x, int rows, int ldx, int cols, int block, int row_capacity,
                                std::int8_t* q, std::int16_t* q16, float* scales, float* sums);

// The blocked kernel of quantized weights against many rows of int8 activations (a prompt's
// prefill), where a table has one: the weights of a strip of a few panels are unpacked once per call
// into `scratch` (at most kMaxStripPanels * kPanel * round_up(K, 64) bytes, 64-byte aligned, one
// slot per thread) in the layout of the integer dot instruction, and then serve every tile of rows of
// x from L1/L2, where the small-M kernels re-decode a panel's codes for every tile of 8 rows.
// Computes the output columns of panels [panel_begin, panel_end) for every row, with the same bits
// as the small-M kernels (the integer sums are exact and the float steps per block are every table's).
constexpr int kMaxStripPanels = 4;
using QuantizedStripKernel = void (*)(const MatmulArgs& args, int panel_begin, int panel_end, std::uint8_t* scratch);

// Vector primitives of the rest of a step (attention, SwiGLU, RMSNorm).
// The attention's two take a tile of m query rows against all cached rows of a head (rows j at
// rows + j * stride, d values each), so that each key or value row loaded serves the whole tile:
// per-row calls re-read the cache once per query, and per-row function calls cost more than a
// 128-value dot product. Each score is one dot product and each output value one chain of fused
// multiply-adds over the rows in row order from zero, whatever the tile: the same bits as one query
// at a time (and, on x86-64, in every table).
struct VectorKernels {
  // out[r * out_stride + j] = q row r . row j, for r < m, j < n; q rows at q + r * d.
  void (*dots)(const float* q, int m, const float* rows, std::size_t stride, int n, int d, float* out,
               std::size_t out_stride);
  // out row r (at out + r * d) = sum over j < n of w[r * w_stride + j] * row j, for r < m.
  void (*weighted_sum)(const float* w, std::size_t w_stride, int m, const float* rows, std::size_t stride, int n, int d,
                       float* out);
  // In place over n >= 1 values: e = exp(v - max v), then v = e * (1 / sum e).
  void (*softmax)(float* v, int n);
  void (*silu_mul)(const float* gate, const float* up, float* out, int n);   // gate * sigmoid(gate) * up
  float (*sum_squares)(const float* x, int n);
};

struct KernelTable {
  const char* name;          // "avx512vnni", "avxvnni", "avx2", "i8mm", "dotprod", "neon", "scalar"
  PanelKernel f32;           // F32 weights, float activations
  PanelKernel quantized;     // Q4 / Q8 weights, int8 activations
  PanelKernel dequantized;   // Q4 / Q8 weights, float activations
  QuantizeKernel quantize;
  bool wants_q16;            // its Q8 kernel reads QuantizedRows::q16
  bool wants_panel_x;        // its float-activation kernels read MatmulArgs::xp
  VectorKernels vec;
  QuantizedStripKernel quantized_strips = nullptr;  // null: the table has none (the small-M kernels at every M)
  bool strips_take_q8 = true;  // false: its strips kernel takes Q4 only, Q8 keeps the small-M kernels
};

// Portable C++; every build has it.
const KernelTable& scalar_kernels();
const VectorKernels& portable_vector_kernels();
// nullptr when the build has no such kernels (other architecture or compiler); they must only be
// used on a CPU that has the instruction set (see cpu_features.h).
const KernelTable* avx512vnni_kernels();
const KernelTable* avxvnni_kernels();
const KernelTable* avx2_kernels();
const KernelTable* neon_kernels();
const KernelTable* dotprod_kernels();  // AArch64 with FEAT_DotProd (sdot)
const KernelTable* i8mm_kernels();     // AArch64 with FEAT_DotProd and FEAT_I8MM (smmla, usmmla)

}  // namespace sdar::cpu
