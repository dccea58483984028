#include "cpu_model.h"

#include <algorithm>
#include <map>

#include "errors.h"

namespace sdar::cpu {
namespace {

std::string fix() { return "; re-export the artifact with sdar-export (the weight file or manifest.json is damaged)"; }

class TensorTable {
 public:
  TensorTable(const MappedFile& file, const std::vector<TensorEntry>& entries) : file_(file) {
    for (const auto& e : entries) by_name_[e.name] = &e;
  }

  const TensorEntry& get(const std::string& name) const {
    const auto it = by_name_.find(name);
    if (it == by_name_.end()) throw InvalidArgument(file_.path() + ": tensor '" + name + "' is missing" + fix());
    return *it->second;
  }

  const std::uint8_t* range(const TensorEntry& e, std::uint64_t offset, std::uint64_t bytes, std::uint64_t want,
                            const char* what) const {
    if (bytes != want) {
      throw InvalidArgument(file_.path() + ": tensor '" + e.name + "' " + what + " has " + std::to_string(bytes) +
                            " bytes, its shape needs " + std::to_string(want) + fix());
    }
    if (offset % 64 != 0 || offset > file_.size() || bytes > file_.size() - offset) {
      throw InvalidArgument(file_.path() + ": tensor '" + e.name + "' " + what + " [" + std::to_string(offset) + ", +" +
                            std::to_string(bytes) + ") lies outside the file (" + std::to_string(file_.size()) +
                            " bytes) or is misaligned" + fix());
    }
    return file_.data() + offset;
  }

  const float* vector(const std::string& name, int size) const {
    const TensorEntry& e = get(name);
    if (e.kind != "vector" || e.rows != size) {
      throw InvalidArgument(file_.path() + ": tensor '" + name + "' must be a vector of " + std::to_string(size) +
                            " floats" + fix());
    }
    return reinterpret_cast<const float*>(range(e, e.data_offset, e.data_bytes, static_cast<std::uint64_t>(size) * 4, "data"));
  }

  PackedMatrix matrix(const std::string& name, int rows, int cols) const {
    const TensorEntry& e = get(name);
    PackedMatrix m;
    if (e.kind == "f32") {
      m.format = WeightFormat::F32;
    } else if (e.kind == "q4") {
      m.format = WeightFormat::Q4;
    } else if (e.kind == "q8") {
      m.format = WeightFormat::Q8;
    } else {
      throw InvalidArgument(file_.path() + ": tensor '" + name + "' has kind '" + e.kind + "', expected f32, q4 or q8" + fix());
    }
    if (e.rows != rows || e.cols != cols) {
      throw InvalidArgument(file_.path() + ": tensor '" + name + "' is [" + std::to_string(e.rows) + ", " +
                            std::to_string(e.cols) + "], the model needs [" + std::to_string(rows) + ", " +
                            std::to_string(cols) + "]" + fix());
    }
    m.rows = rows;
    m.cols = cols;
    m.group = e.group;
    m.symmetric = e.symmetric;
    m.validate_shape(name.c_str());  // the group size, before the sizes below use it
    m.data = range(e, e.data_offset, e.data_bytes, m.data_bytes(), "data");
    if (m.format != WeightFormat::F32) {
      m.scales = reinterpret_cast<const float*>(range(e, e.scales_offset, e.scales_bytes, m.scale_bytes(), "scales"));
      if (!m.symmetric) {
        m.zero_scales = reinterpret_cast<const float*>(
            range(e, e.zero_scales_offset, e.zero_scales_bytes, m.zero_scale_bytes(), "zero_scales"));
      }
    }
    m.validate(name.c_str());
    return m;
  }

 private:
  const MappedFile& file_;
  std::map<std::string, const TensorEntry*> by_name_;
};

}  // namespace

void CpuModelDims::validate() const {
  const auto positive = [](int v, const char* name) {
    if (v <= 0) throw InvalidArgument(std::string("CPU engine model: ") + name + " must be positive, got " + std::to_string(v));
  };
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_heads, "num_heads");
  positive(num_kv_heads, "num_kv_heads");
  positive(head_dim, "head_dim");
  positive(num_layers, "num_layers");
  positive(vocab_size, "vocab_size");
  if (num_heads % num_kv_heads != 0) throw InvalidArgument("CPU engine model: num_heads is not a multiple of num_kv_heads");
  if (head_dim % 2 != 0) throw InvalidArgument("CPU engine model: head_dim must be even (RoPE)");
  if (!(rms_norm_eps > 0.0f)) throw InvalidArgument("CPU engine model: rms_norm_eps must be positive");
}

CpuModel::CpuModel(std::shared_ptr<const MappedFile> file, const CpuModelDims& dims, const std::vector<TensorEntry>& tensors)
    : file_(std::move(file)), dims_(dims) {
  dims_.validate();
  const TensorTable t(*file_, tensors);
  const int H = dims_.hidden_size;
  const int D = dims_.head_dim;
  embed_ = t.matrix("embed", dims_.vocab_size, H);
  lm_head_ = t.matrix("lm_head", dims_.vocab_size, H);
  final_norm_ = t.vector("final_norm", H);
  inv_freq_ = t.vector("rope_inv_freq", D / 2);
  layers_.resize(dims_.num_layers);
  for (int i = 0; i < dims_.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    LayerWeights& l = layers_[i];
    l.input_norm = t.vector(p + "input_norm", H);
    l.post_norm = t.vector(p + "post_norm", H);
    l.q_norm = t.vector(p + "q_norm", D);
    l.k_norm = t.vector(p + "k_norm", D);
    l.qkv = t.matrix(p + "qkv", (dims_.num_heads + 2 * dims_.num_kv_heads) * D, H);
    l.o = t.matrix(p + "o", H, dims_.num_heads * D);
    l.gate_up = t.matrix(p + "gate_up", 2 * dims_.intermediate_size, H);
    l.down = t.matrix(p + "down", H, dims_.intermediate_size);
  }
}

int CpuModel::max_cols() const {
  return std::max({dims_.hidden_size, dims_.num_heads * dims_.head_dim, dims_.intermediate_size});
}

}  // namespace sdar::cpu
