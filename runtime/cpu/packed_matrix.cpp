#include "packed_matrix.h"

#include <string>

#include "errors.h"

namespace sdar::cpu {

const char* weight_format_name(WeightFormat format) {
  switch (format) {
    case WeightFormat::F32: return "f32";
    case WeightFormat::Q4: return "q4";
    case WeightFormat::Q8: return "q8";
  }
  return "unknown";
}

int PackedMatrix::panels() const { return (rows + kPanel - 1) / kPanel; }

int PackedMatrix::groups() const { return group > 0 ? cols / group : 0; }

float symmetric_zero_point(WeightFormat format) { return format == WeightFormat::Q4 ? 8.0f : 128.0f; }

std::size_t PackedMatrix::data_bytes() const {
  const std::size_t padded = static_cast<std::size_t>(panels()) * kPanel;
  switch (format) {
    case WeightFormat::F32: return padded * cols * sizeof(float);
    case WeightFormat::Q4: return padded * ((cols + 2 * kChunk - 1) / (2 * kChunk)) * 32;
    case WeightFormat::Q8: return padded * cols;
  }
  return 0;
}

std::size_t PackedMatrix::scale_bytes() const {
  if (format == WeightFormat::F32) return 0;
  return static_cast<std::size_t>(panels()) * groups() * kPanel * sizeof(float);
}

std::size_t PackedMatrix::zero_scale_bytes() const { return symmetric ? 0 : scale_bytes(); }

void PackedMatrix::validate_shape(const char* name) const {
  const std::string who = std::string("weight '") + name + "' (" + weight_format_name(format) + ")";
  if (rows <= 0 || cols <= 0) {
    throw InvalidArgument(who + ": shape [" + std::to_string(rows) + ", " + std::to_string(cols) + "] is empty");
  }
  if (format == WeightFormat::F32) return;
  if (group <= 0 || group % kChunk != 0 || cols % group != 0) {
    throw InvalidArgument(who + ": group size " + std::to_string(group) + " must be a multiple of " +
                          std::to_string(kChunk) + " that divides the input dimension " + std::to_string(cols));
  }
}

void PackedMatrix::validate(const char* name) const {
  validate_shape(name);
  const std::string who = std::string("weight '") + name + "' (" + weight_format_name(format) + ")";
  if (data == nullptr) throw InvalidArgument(who + ": no data");
  if (format == WeightFormat::F32) return;
  if (scales == nullptr) throw InvalidArgument(who + ": no scales");
  if (!symmetric && zero_scales == nullptr) throw InvalidArgument(who + ": asymmetric but no zero points");
}

}  // namespace sdar::cpu
