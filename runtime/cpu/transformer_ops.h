// The non-matmul parts of a Qwen3 step, as the exported graphs compute them (export/sdar_export/
// model.py): RMSNorm in float32, per-head q/k norm and RoPE, block-causal attention over the KV
// cache, SwiGLU. Rows are independent; the callers split them (or the attention's heads) over the
// thread pool.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels.h"
#include "packed_matrix.h"

namespace sdar::cpu {

// out = x * rsqrt(mean(x^2) + eps) * w over n values.
void rms_norm(const VectorKernels& v, const float* x, const float* w, float* out, int n, float eps);

// One row of a weight matrix as float32 (the embedding lookup): out[cols].
void matrix_row(const PackedMatrix& m, int row, float* out);

// In place on one head of D values: RMSNorm with w, then RoPE with this position's cos / sin
// (D / 2 each; the graphs' cos / sin repeat them for the second half), then times `scale`.
void norm_rope(const VectorKernels& v, float* head, const float* w, const float* cos, const float* sin, int D, float eps,
               float scale);

// Block-causal attention of one (batch row, kv head): for each of its query heads g < G and new
// tokens t in [t_begin, t_end), softmax over cache rows [0, past_len + min(T, (t / L + 1) * L)) of
// q.k, times V. q / out: [B * T][heads * D] rows (row b * T + t); the cache:
// [max_context][B][kv_heads][D]. The query rows go in tiles of up to attention_tile_tokens() tokens
// times G heads (VectorKernels: each cache row read serves the tile). scratch: at least
// attention_scratch_floats(s, past_len + T) floats. rows_copy: null, or attention_rows_floats(s,
// past_len + T) floats where a range of several tiles first copies the head's cached rows next to
// each other (the cache keeps one position's heads together, so a head's rows lie far apart and
// map onto the same few cache sets); the outputs are the same bits either way.
struct AttentionShape {
  int batch = 0;
  int tokens = 0;
  int block_length = 0;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  std::int64_t past_len = 0;
};
// Query rows per tile: 12 fill the register tiles of every x86 table (6 or 3 rows at a time).
constexpr int kAttentionTileRows = 12;
int attention_tile_tokens(const AttentionShape& s);
std::size_t attention_scratch_floats(const AttentionShape& s, std::int64_t max_context);
std::size_t attention_rows_floats(const AttentionShape& s, std::int64_t max_context);
void attend(const VectorKernels& v, const AttentionShape& s, int b, int kv_head, int t_begin, int t_end, const float* q,
            const float* key_cache, const float* value_cache, float* out, float* scratch, float* rows_copy);

}  // namespace sdar::cpu
