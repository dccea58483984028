// Which kernel table this CPU can run, decided at run time: a build made here must still run on a
// CPU without AVX2 (the portable kernels), so only the kernel sources carry instruction-set flags.
#pragma once

#include <string>
#include <vector>

#include "kernels.h"

namespace sdar::cpu {

// Names of the kernel tables this build has and this CPU can run, fastest first ("scalar" last).
std::vector<std::string> available_kernels();

// The table for `name`: "auto" (the fastest available), "avx512vnni", "avxvnni", "avx2", "i8mm", "dotprod",
// "neon" or "scalar". Throws InvalidArgument naming what this CPU / build offers when `name` is unknown or
// cannot run here.
const KernelTable& select_kernels(const std::string& name);

}  // namespace sdar::cpu
