#include "generation_config.h"

#include "errors.h"

namespace sdar {

RemaskPolicy parse_remask_policy(const std::string& name) {
  if (name == "sequential") return RemaskPolicy::Sequential;
  if (name == "low_confidence_static") return RemaskPolicy::LowConfidenceStatic;
  if (name == "low_confidence_dynamic") return RemaskPolicy::LowConfidenceDynamic;
  if (name == "entropy_bounded") return RemaskPolicy::EntropyBounded;
  throw InvalidArgument("unknown remasking policy '" + name +
                        "' (expected sequential, low_confidence_static, low_confidence_dynamic or entropy_bounded)");
}

std::string remask_policy_name(RemaskPolicy policy) {
  switch (policy) {
    case RemaskPolicy::Sequential: return "sequential";
    case RemaskPolicy::LowConfidenceStatic: return "low_confidence_static";
    case RemaskPolicy::LowConfidenceDynamic: return "low_confidence_dynamic";
    case RemaskPolicy::EntropyBounded: return "entropy_bounded";
  }
  throw InvalidArgument("unknown remasking policy");
}

}  // namespace sdar
