// The AMX-INT8 kernel of quantized matmuls of many rows (a prompt's prefill; amx.h is the driver).
// Like the kernel tables and the GEMM microkernels, its source (quantized_amx.cpp) is compiled with
// its instruction set's flags (AMX-TILE, AMX-INT8 and AVX-512), so it includes nothing but this
// header, kernels.h and the intrinsics headers.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace sdar::cpu {

// A tile of x is 16 rows (AMX tiles have at most 16 rows), and x goes in passes of two tiles, so
// QuantizedRows::row_capacity is a multiple of 32 on this path (the padding rows zero); the weights
// go in strips of 4 panels (32 output columns, two tiles of 16 int32 results wide): 2 x 2
// accumulator tiles, 32 x 32 outputs.
constexpr int kAmxTileRows = 16;
constexpr int kAmxStripPanels = 4;
constexpr int kAmxStripColumns = kAmxStripPanels * kPanel;
constexpr int kAmxPassRows = 2 * kAmxTileRows;

// Per-task scratch, 64-byte aligned, owned by the driver:
//   b:   the strip's weight codes as unsigned bytes in AMX's layout, 32 * round_up(K, 64) bytes
//        ([2 column tiles][round_up(K, 64) / 4][16 columns][4 codes]);
//   dot: two activation blocks' integer sums, [2][32 rows][32 columns] int32 (one being computed,
//        the other in the float steps);
//   acc: the float sums of the strip so far, [row_capacity][32 columns].
struct AmxScratch {
  std::uint8_t* b = nullptr;
  std::int32_t* dot = nullptr;
  float* acc = nullptr;
};

// Computes the output columns of strips [strip_begin, strip_end) (strip s: panels [4s, 4s + 4)) for
// every row of args.rows, Q4 or Q8 weights against args.a (the avx512vnni table's QuantizedRows:
// runs of 64 codes, row_capacity a multiple of 32). Loads its tile configuration on entry and
// releases the tiles on return, so one call is one task of the thread pool on any worker.
using AmxQuantizedKernel = void (*)(const MatmulArgs& args, int strip_begin, int strip_end, const AmxScratch& scratch);

// nullptr when the build has no AMX kernel (other architecture, or a compiler without the flags).
// Only to be called once amx.h's check says the CPU and the OS allow AMX.
AmxQuantizedKernel amx_quantized_kernel();

}  // namespace sdar::cpu
