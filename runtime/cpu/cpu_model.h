// The dense SDAR (Qwen3) network as the CPU engine runs it: dimensions and views of the packed
// weights inside the mapped weight file (written by sdar-export, described in manifest.json's
// "cpu_engine" section, which the Python layer passes in as a tensor table).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mapped_file.h"
#include "packed_matrix.h"

namespace sdar::cpu {

struct CpuModelDims {
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int num_layers = 0;
  int vocab_size = 0;
  float rms_norm_eps = 1e-6f;

  // Throws InvalidArgument naming the first inconsistent field.
  void validate() const;
};

// One tensor of the weight file. kind: "f32" | "q4" | "q8" (a matrix, PackedMatrix layouts) or
// "vector" (float32[rows]). Byte ranges are offsets into the file.
struct TensorEntry {
  std::string name;
  std::string kind;
  int rows = 0;
  int cols = 0;
  int group = 0;
  bool symmetric = true;
  std::uint64_t data_offset = 0;
  std::uint64_t data_bytes = 0;
  std::uint64_t scales_offset = 0;
  std::uint64_t scales_bytes = 0;
  std::uint64_t zero_scales_offset = 0;
  std::uint64_t zero_scales_bytes = 0;
};

struct LayerWeights {
  const float* input_norm = nullptr;  // [hidden]
  const float* post_norm = nullptr;   // [hidden]
  const float* q_norm = nullptr;      // [head_dim]
  const float* k_norm = nullptr;      // [head_dim]
  PackedMatrix qkv;                   // [(heads + 2 kv_heads) * head_dim, hidden]: q, k, v rows
  PackedMatrix o;                     // [hidden, heads * head_dim]
  PackedMatrix gate_up;               // [2 intermediate, hidden]: gate rows, then up rows
  PackedMatrix down;                  // [hidden, intermediate]
};

class CpuModel {
 public:
  // Checks every tensor (presence, shape, byte ranges inside the file, sizes of its layout) and
  // throws InvalidArgument naming the tensor and the problem.
  CpuModel(std::shared_ptr<const MappedFile> file, const CpuModelDims& dims, const std::vector<TensorEntry>& tensors);

  const CpuModelDims& dims() const { return dims_; }
  const PackedMatrix& embed() const { return embed_; }
  const PackedMatrix& lm_head() const { return lm_head_; }
  const float* final_norm() const { return final_norm_; }
  const float* rope_inv_freq() const { return inv_freq_; }  // [head_dim / 2]
  const LayerWeights& layer(int i) const { return layers_[i]; }
  const std::string& path() const { return file_->path(); }
  // Largest K of any matrix (the matmul workspace width).
  int max_cols() const;

 private:
  std::shared_ptr<const MappedFile> file_;
  CpuModelDims dims_;
  PackedMatrix embed_;
  PackedMatrix lm_head_;
  const float* final_norm_ = nullptr;
  const float* inv_freq_ = nullptr;
  std::vector<LayerWeights> layers_;
};

}  // namespace sdar::cpu
