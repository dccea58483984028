// UnmaskWorkspace: validation, scratch ownership and dispatch (host code).
#include "unmask.h"

#include <climits>
#include <cstdint>
#include <string>

#include "buffer.h"
#include "cuda/cuda_allocator.h"
#include "cuda/stream.h"
#include "cuda/cuda_check.h"
#include "errors.h"
#include "launch.h"
#include "step_args.cuh"

namespace sdar::cuda {

using detail::StepArgs;

static_assert(static_cast<int>(RemaskPolicy::Sequential) == rules::kSequential &&
                  static_cast<int>(RemaskPolicy::LowConfidenceStatic) == rules::kLowConfidenceStatic &&
                  static_cast<int>(RemaskPolicy::LowConfidenceDynamic) == rules::kLowConfidenceDynamic &&
                  static_cast<int>(RemaskPolicy::EntropyBounded) == rules::kEntropyBounded,
              "step_rules.h mirrors generation_config.h's RemaskPolicy");

struct UnmaskWorkspace::Impl {
  UnmaskLimits limits;
  int positions = 0;  // max B * L
  int sm_count = 1;
  std::shared_ptr<Allocator> allocator;
  // results
  Buffer out_token, out_conf, block_done, active_rows;
  // greedy scratch
  Buffer partial_max, partial_index, partial_sum, position_arrivals, grid_arrivals, partial_moment;
  // sampling scratch
  Buffer keys_in, keys_out, values_in, values_out, segment_begin, segment_end, total, moment, sort_temp;
  std::size_t sort_temp_bytes = 0;
  PinnedBuffer host_active;

  template <typename T>
  Buffer device(std::size_t count) const {
    return Buffer(allocator, sizeof(T) * (count == 0 ? 1 : count), 256);
  }
};

namespace {
void require(bool ok, const std::string& what) {
  if (!ok) throw InvalidArgument("unmask step: " + what);
}
}  // namespace

UnmaskWorkspace::UnmaskWorkspace(const UnmaskLimits& limits) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.limits = limits;
  if (limits.max_batch < 1 || limits.block_length < 1 || limits.vocab_size < 1) {
    throw InvalidArgument("UnmaskWorkspace needs max_batch, block_length and vocab_size >= 1");
  }
  if (limits.block_length > detail::kMaxBlockLength) {
    throw InvalidArgument("UnmaskWorkspace supports block_length <= " + std::to_string(detail::kMaxBlockLength) +
                          ", got " + std::to_string(limits.block_length));
  }
  const std::int64_t positions = static_cast<std::int64_t>(limits.max_batch) * limits.block_length;
  if (positions * limits.vocab_size >= INT_MAX) {
    throw InvalidArgument("UnmaskWorkspace: max_batch * block_length * vocab_size must stay below 2^31");
  }
  m.positions = static_cast<int>(positions);
  m.allocator = std::make_shared<CudaAllocator>();  // throws DeviceError without a GPU
  int device = 0;
  SDAR_CUDA_CHECK(cudaGetDevice(&device));
  SDAR_CUDA_CHECK(cudaDeviceGetAttribute(&m.sm_count, cudaDevAttrMultiProcessorCount, device));

  const auto P = static_cast<std::size_t>(m.positions);
  m.out_token = m.device<std::int64_t>(P);
  m.out_conf = m.device<double>(P);
  m.block_done = m.device<std::uint8_t>(static_cast<std::size_t>(limits.max_batch));
  m.active_rows = m.device<std::int32_t>(1);
  const std::size_t partials = P * detail::kMaxChunks;
  m.partial_max = m.device<float>(partials);
  m.partial_index = m.device<int>(partials);
  m.partial_sum = m.device<double>(partials);
  m.position_arrivals = m.device<unsigned int>(P);  // zero-filled: the kernels' invariant
  m.grid_arrivals = m.device<unsigned int>(1);
  m.partial_moment = m.device<double>(partials);
  if (limits.sampling) {
    const std::size_t items = P * static_cast<std::size_t>(limits.vocab_size);
    m.keys_in = m.device<double>(items);
    m.keys_out = m.device<double>(items);
    m.values_in = m.device<int>(items);
    m.values_out = m.device<int>(items);
    m.segment_begin = m.device<int>(P);
    m.segment_end = m.device<int>(P);
    m.total = m.device<double>(P);
    m.moment = m.device<double>(P);
    m.sort_temp_bytes = detail::sample_sort_temp_bytes(m.positions, limits.vocab_size);
    m.sort_temp = m.device<std::uint8_t>(m.sort_temp_bytes);
  }
  m.host_active = PinnedBuffer(sizeof(std::int32_t));
}

UnmaskWorkspace::~UnmaskWorkspace() = default;

const UnmaskLimits& UnmaskWorkspace::limits() const { return impl_->limits; }

void UnmaskWorkspace::step(const UnmaskBuffers& b, const UnmaskParams& p, cudaStream_t stream) {
  Impl& m = *impl_;
  const UnmaskLimits& lim = m.limits;
  const int L = lim.block_length;
  require(p.rows >= 1 && p.rows <= lim.max_batch,
          "rows " + std::to_string(p.rows) + " outside [1, " + std::to_string(lim.max_batch) + "]");
  require(b.logits != nullptr && b.tokens != nullptr && b.masked != nullptr, "logits, tokens and masked are required");
  require(b.tokens_stride >= L && b.masked_stride >= L, "tokens_stride and masked_stride must be >= block_length");
  require(p.scheduled >= 1, "scheduled must be >= 1, got " + std::to_string(p.scheduled));
  require(p.block_start >= 0, "block_start must be >= 0");
  if (p.remasking == RemaskPolicy::EntropyBounded) {
    require(p.threshold >= 0.0 && p.threshold < INFINITY, "the entropy budget must be a finite number >= 0");
  } else {
    require(p.threshold > 0.0 && p.threshold <= 1.0, "threshold must be in (0, 1]");
  }
  require(p.temperature >= 0.0 && p.temperature < INFINITY, "temperature must be a finite number >= 0");
  require(p.top_k >= 0, "top_k must be >= 0");
  require(p.top_p > 0.0 && p.top_p <= 1.0, "top_p must be in (0, 1]");
  const bool greedy = p.temperature == 0.0;
  if (!greedy && !lim.sampling) {
    throw InvalidArgument("unmask step: temperature > 0 needs a workspace built with sampling = true");
  }

  StepArgs a{};
  a.logits = b.logits;
  a.vocab = lim.vocab_size;
  a.block_length = L;
  a.rows = p.rows;
  a.tokens = b.tokens;
  a.tokens_stride = b.tokens_stride;
  a.masked = b.masked;
  a.masked_stride = b.masked_stride;
  a.row_done = b.row_done;
  a.row_ids = b.row_ids;
  a.row_steps = b.row_steps;
  a.block_start = p.block_start;
  a.scheduled = p.scheduled;
  a.policy = static_cast<int>(p.remasking);
  a.threshold = p.threshold;
  a.temperature = p.temperature;
  a.top_k = p.top_k;
  a.top_p = p.top_p;
  a.seed = p.seed;
  a.out_token = m.out_token.as<std::int64_t>();
  a.out_conf = m.out_conf.as<double>();
  a.block_done = m.block_done.as<std::uint8_t>();
  a.active_rows = m.active_rows.as<std::int32_t>();

  if (greedy) {
    const std::size_t element = b.logits_type == LogitsType::Float32 ? 4 : 2;
    const std::size_t width = 16 / element;
    // 16-byte loads need every row start aligned: V a multiple of the vector width.
    const bool vectorized = reinterpret_cast<std::uintptr_t>(b.logits) % 16 == 0 &&
                            static_cast<std::size_t>(lim.vocab_size) % width == 0;
    const int positions = p.rows * L;
    const detail::GreedyScratch scratch{m.partial_max.as<float>(), m.partial_index.as<int>(),
                                        m.partial_sum.as<double>(), m.position_arrivals.as<unsigned int>(),
                                        m.grid_arrivals.as<unsigned int>(), m.partial_moment.as<double>()};
    detail::launch_greedy_step(a, b.logits_type, scratch, detail::greedy_chunks(positions, lim.vocab_size, m.sm_count),
                               vectorized, stream);
  } else {
    const detail::SampleScratch scratch{m.keys_in.as<double>(),   m.keys_out.as<double>(),  m.values_in.as<int>(),
                                        m.values_out.as<int>(),   m.segment_begin.as<int>(), m.segment_end.as<int>(),
                                        m.total.as<double>(),     m.moment.as<double>(),     m.sort_temp.data(),
                                        m.sort_temp_bytes};
    detail::launch_sample_step(a, b.logits_type, scratch, stream);
  }
}

int UnmaskWorkspace::wait_active_rows(cudaStream_t stream) {
  Impl& m = *impl_;
  SDAR_CUDA_CHECK(cudaMemcpyAsync(m.host_active.as<std::int32_t>(), m.active_rows.data(), sizeof(std::int32_t),
                                  cudaMemcpyDeviceToHost, stream));
  SDAR_CUDA_CHECK(cudaStreamSynchronize(stream));
  return *m.host_active.as<std::int32_t>();
}

const std::int64_t* UnmaskWorkspace::sampled_tokens() const { return impl_->out_token.as<std::int64_t>(); }
const double* UnmaskWorkspace::confidences() const { return impl_->out_conf.as<double>(); }
const std::uint8_t* UnmaskWorkspace::block_done() const { return impl_->block_done.as<std::uint8_t>(); }
const std::int32_t* UnmaskWorkspace::active_rows() const { return impl_->active_rows.as<std::int32_t>(); }

}  // namespace sdar::cuda
