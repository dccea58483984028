#include "device_backend.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "cuda/cuda_allocator.h"
#include "cuda/cuda_check.h"
#include "errors.h"

namespace sdar::cuda {

DeviceBackend::DeviceBackend() : allocator_(cuda_allocator()) {}

DeviceBackend::~DeviceBackend() {
  cudaStreamSynchronize(stream_.get());  // nothing in flight on memory about to be freed
  cudaGetLastError();
}

void DeviceBackend::require_usable() const {
  if (!failure_.empty()) {
    throw DeviceError("this Generator's GPU failed in an earlier call (" + failure_ +
                          "); the CUDA context of this process cannot be used again: restart the process",
                      cudaErrorUnknown);
  }
}

void DeviceBackend::attach(const ModelSpec& spec, const StepBuffers& buffers) {
  spec_ = spec;
  buffers_ = &buffers;
  const auto B = static_cast<std::size_t>(spec.batch);
  const std::size_t cells = B * static_cast<std::size_t>(spec.max_context);
  sequence_ = Buffer(allocator_, sizeof(std::int64_t) * cells, 256);
  masked_ = Buffer(allocator_, cells, 256);
  row_done_ = Buffer(allocator_, B, 256);
  row_ids_ = Buffer(allocator_, sizeof(std::uint32_t) * B, 256);
  row_steps_ = Buffer(allocator_, sizeof(std::uint32_t) * B, 256);
  host_done_ = PinnedBuffer(B);
  host_block_ = PinnedBuffer(sizeof(std::int64_t) * B * static_cast<std::size_t>(spec.block_length));
  greedy_ = std::make_unique<UnmaskWorkspace>(UnmaskLimits{spec.batch, spec.block_length, spec.vocab_size, false});
}

UnmaskWorkspace& DeviceBackend::workspace(bool sampling) {
  if (!sampling) return *greedy_;
  if (!sampling_) {
    sampling_ = std::make_unique<UnmaskWorkspace>(UnmaskLimits{spec_.batch, spec_.block_length, spec_.vocab_size, true});
  }
  return *sampling_;
}

void DeviceBackend::begin_call(const CallSetup& setup) {
  require_usable();
  call_ = setup;
  engine_seconds_ = 0.0;
  passes_pending_ = 0;
  uploaded_done_.clear();
  const int B = spec_.batch;
  const auto total = static_cast<std::size_t>(setup.total);
  // Stage [B, total] on the host, then one strided copy per buffer (once per call).
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(B) * total);
  std::vector<std::uint8_t> masked(static_cast<std::size_t>(B) * total);
  write_call_rows(setup, B, spec_.mask_id, total, tokens.data(), masked.data());
  const auto pitch = static_cast<std::size_t>(spec_.max_context);
  cudaStream_t s = stream_.get();
  SDAR_CUDA_CHECK(cudaMemcpy2DAsync(sequence_.data(), pitch * sizeof(std::int64_t), tokens.data(),
                                    total * sizeof(std::int64_t), total * sizeof(std::int64_t),
                                    static_cast<std::size_t>(B), cudaMemcpyHostToDevice, s));
  SDAR_CUDA_CHECK(cudaMemcpy2DAsync(masked_.data(), pitch, masked.data(), total, total, static_cast<std::size_t>(B),
                                    cudaMemcpyHostToDevice, s));
  SDAR_CUDA_CHECK(cudaMemcpyAsync(row_ids_.data(), setup.row_ids->data(), sizeof(std::uint32_t) * setup.row_ids->size(),
                                  cudaMemcpyHostToDevice, s));
  SDAR_CUDA_CHECK(cudaMemsetAsync(row_steps_.data(), 0, sizeof(std::uint32_t) * static_cast<std::size_t>(B), s));
  SDAR_CUDA_CHECK(cudaStreamSynchronize(s));  // the staging vectors go out of scope
  call_ready_at_ = std::chrono::steady_clock::now();  // the stream is idle: the event below fires now
  call_ready_.record(s);
}

void DeviceBackend::pack_ids(int start, int tokens) {
  const std::size_t width = sizeof(std::int64_t) * static_cast<std::size_t>(tokens);
  const std::int64_t* source = sequence_.as<std::int64_t>() + start;
  SDAR_CUDA_CHECK(cudaMemcpy2DAsync(buffers_->input_ids(), width, source,
                                    sizeof(std::int64_t) * static_cast<std::size_t>(spec_.max_context), width,
                                    static_cast<std::size_t>(spec_.batch), cudaMemcpyDeviceToDevice, stream_.get()));
}

void DeviceBackend::run_engine(Engine& engine, GraphKind kind, std::int64_t past_len, int tokens) {
  if (passes_pending_ == pass_start_.size()) {  // grows only up to the passes between two syncs
    pass_start_.emplace_back(true);
    pass_end_.emplace_back(true);
  }
  pass_start_[passes_pending_].record(stream_.get());
  engine.run(kind, past_len, tokens);
  pass_end_[passes_pending_].record(stream_.get());
  ++passes_pending_;
}

void DeviceBackend::collect_engine_time() {
  for (std::size_t i = 0; i < passes_pending_; ++i) {
    engine_seconds_ += 1e-3 * static_cast<double>(pass_end_[i].elapsed_ms_since(pass_start_[i]));
  }
  passes_pending_ = 0;
}

void DeviceBackend::mark_prefill_end() { prefill_end_.record(stream_.get()); }

double DeviceBackend::prefill_seconds(std::chrono::steady_clock::time_point call_start) {
  prefill_end_.synchronize();
  const double setup = std::chrono::duration<double>(call_ready_at_ - call_start).count();
  return setup + 1e-3 * static_cast<double>(prefill_end_.elapsed_ms_since(call_ready_));
}

void DeviceBackend::upload_done(const std::vector<std::uint8_t>& done) {
  if (done == uploaded_done_) return;  // changes only between blocks
  std::copy(done.begin(), done.end(), host_done_.as<std::uint8_t>());
  SDAR_CUDA_CHECK(cudaMemcpyAsync(row_done_.data(), host_done_.as<std::uint8_t>(), done.size(), cudaMemcpyHostToDevice,
                                  stream_.get()));
  uploaded_done_ = done;
}

int DeviceBackend::unmask_step(const StepRequest& request) {
  const GenerationConfig& config = *call_.config;
  upload_done(*request.done);
  const std::size_t offset = static_cast<std::size_t>(request.block_start);
  UnmaskBuffers buffers;
  buffers.logits = buffers_->logits();
  buffers.logits_type = LogitsType::Float32;
  buffers.tokens = sequence_.as<std::int64_t>() + offset;
  buffers.tokens_stride = spec_.max_context;
  buffers.masked = masked_.as<std::uint8_t>() + offset;
  buffers.masked_stride = spec_.max_context;
  buffers.row_done = row_done_.as<std::uint8_t>();
  buffers.row_ids = row_ids_.as<std::uint32_t>();
  buffers.row_steps = row_steps_.as<std::uint32_t>();
  UnmaskParams params;
  params.rows = static_cast<int>(call_.prompts->size());
  params.block_start = request.block_start;
  params.scheduled = request.scheduled;
  params.remasking = config.remasking;
  params.threshold = step_threshold(config);
  params.temperature = config.temperature;
  params.top_k = config.top_k;
  params.top_p = config.top_p;
  params.seed = config.seed;
  UnmaskWorkspace& ws = workspace(config.temperature != 0.0);
  ws.step(buffers, params, stream_.get());
  const int active = ws.wait_active_rows(stream_.get());  // the step's one host sync
  collect_engine_time();
  return active;
}

void DeviceBackend::read_block(int block_start, std::vector<std::int64_t>& tokens) {
  const auto L = static_cast<std::size_t>(spec_.block_length);
  const auto B = static_cast<std::size_t>(spec_.batch);
  const std::size_t width = sizeof(std::int64_t) * L;
  SDAR_CUDA_CHECK(cudaMemcpy2DAsync(host_block_.as<std::int64_t>(), width,
                                    sequence_.as<std::int64_t>() + block_start,
                                    sizeof(std::int64_t) * static_cast<std::size_t>(spec_.max_context), width, B,
                                    cudaMemcpyDeviceToHost, stream_.get()));
  stream_.synchronize();
  collect_engine_time();
  tokens.assign(host_block_.as<std::int64_t>(), host_block_.as<std::int64_t>() + B * L);
}

void DeviceBackend::read_block_state(int block_start, std::vector<std::int64_t>& tokens,
                                     std::vector<std::uint8_t>& masked) {
  const auto L = static_cast<std::size_t>(spec_.block_length);
  const auto B = static_cast<std::size_t>(spec_.batch);
  const auto pitch = static_cast<std::size_t>(spec_.max_context);
  masked.resize(B * L);
  SDAR_CUDA_CHECK(cudaMemcpy2DAsync(masked.data(), L, masked_.as<std::uint8_t>() + block_start, pitch, L, B,
                                    cudaMemcpyDeviceToHost, stream_.get()));
  read_block(block_start, tokens);  // its sync also completes the copy above (same stream)
}

double DeviceBackend::engine_seconds() {
  if (passes_pending_ > 0) {
    stream_.synchronize();
    collect_engine_time();
  }
  return engine_seconds_;
}

void DeviceBackend::after_failure() noexcept {
  passes_pending_ = 0;
  uploaded_done_.clear();
  const cudaError_t status = cudaStreamSynchronize(stream_.get());
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clears a non-sticky error; a sticky one (a kernel fault) stays
  if (cudaDeviceSynchronize() != cudaSuccess) failure_ = describe(status, "the GPU stream");
  cudaGetLastError();
}

}  // namespace sdar::cuda
