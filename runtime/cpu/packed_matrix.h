// Weight matrices in the native CPU engine's packed layouts, as sdar-export writes them
// (export/sdar_export/cpu_weights.py) and the kernels read them straight from the mapped file.
// No function bodies here: the kernel sources, compiled with AVX2 flags, include this header, and
// an inline function emitted there could be the copy the linker keeps for every caller.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sdar::cpu {

// Output rows are handled in panels of 8: one vector of results, and the unit of work the thread
// pool hands out. Rows are padded to a whole panel in the file (zero weights and scales).
constexpr int kPanel = 8;
// Quantized weights come in chunks of 32 along K; float activations are read in steps of 8.
constexpr int kChunk = 32;
constexpr int kF32Step = 8;

// Layouts: a panel is one contiguous range, read front to back whatever the number of rows of x;
// quantized rows are interleaved per unit of 32 bytes:
//   Q4:  [panels][ceil(cols / 64)][8 rows][32 bytes]: a unit holds 64 weights, byte j weight j in
//        its low nibble and weight j + 32 in its high nibble (one load and a mask give chunk 2u of
//        32 weights in order, a shift and a mask chunk 2u + 1; a 512-bit register holds both);
//        with cols an odd number of chunks, the last unit's high nibbles are zero;
//   Q8:  [panels][cols / 32][8 rows][32 bytes];
//   F32: [panels][cols][8 rows]: k-major, the 8 weights of column k of a panel are one vector, so
//        the float kernel multiplies it by x[m][k] broadcast (an outer product, no horizontal sums).
enum class WeightFormat : int {
  F32 = 0,  // float32 weights
  Q4 = 1,   // unsigned 4-bit codes u in [0, 16): w = (u - z) * scale
  Q8 = 2,   // unsigned 8-bit codes u in [0, 256): w = (u - z) * scale
};

const char* weight_format_name(WeightFormat format);

// A view of one packed matrix W [rows, cols] (a Linear's weight: y = x W^T).
// Quantized formats: one scale per `group` consecutive K elements of a row. Scales and
// zero_scales are stored per panel and group, [rows_padded / 8][cols / group][8], so the 8 rows of
// a panel read one vector per group. symmetric: the zero point is 2^(bits-1) (8 or 128);
// otherwise zero_scales holds zero_point * scale per row and group.
struct PackedMatrix {
  WeightFormat format = WeightFormat::F32;
  int rows = 0;
  int cols = 0;
  int group = 0;
  bool symmetric = true;
  const void* data = nullptr;
  const float* scales = nullptr;
  const float* zero_scales = nullptr;

  int panels() const;
  int groups() const;
  // Bytes of the data, scales and zero_scales arrays, for bounds checks against the file.
  std::size_t data_bytes() const;
  std::size_t scale_bytes() const;
  std::size_t zero_scale_bytes() const;
  // Throws InvalidArgument naming the problem: validate_shape the shape and group size,
  // validate those and the arrays.
  void validate_shape(const char* name) const;
  void validate(const char* name) const;
};

// The symmetric zero point of a format: 2^(bits-1).
float symmetric_zero_point(WeightFormat format);

}  // namespace sdar::cpu
