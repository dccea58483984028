#include "philox.h"

#include "step_rules.h"

namespace sdar {

PhiloxCounter philox4x32_10(PhiloxCounter c, PhiloxKey k) {
  const rules::Philox4x32 out = rules::philox4x32_10(rules::Philox4x32{{c[0], c[1], c[2], c[3]}}, k[0], k[1]);
  return {out.word[0], out.word[1], out.word[2], out.word[3]};
}

double philox_uniform(std::uint64_t seed, std::uint32_t row, std::uint32_t step, std::uint32_t position) {
  return rules::philox_uniform(seed, row, step, position);
}

}  // namespace sdar
