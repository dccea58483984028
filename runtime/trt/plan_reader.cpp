#include "plan_reader.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "errors.h"

// IStreamReaderV2 (asynchronous reads that may target device memory, and seeks) appeared in
// TensorRT 10.7 and is the only streaming form in 11.x; 10.0-10.6 have IStreamReader.
#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 7)
#define SDAR_TRT_STREAM_READER_V2 1
#include <cuda_runtime_api.h>
#else
#define SDAR_TRT_STREAM_READER_V2 0
#include <sys/mman.h>
#include <sys/stat.h>
#endif

namespace sdar::trt {

namespace {

struct FileCloser {
  void operator()(std::FILE* f) const noexcept { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

#if SDAR_TRT_STREAM_READER_V2
// Reads `bytes` from `file` into host memory; the count read, -1 on an I/O error.
std::int64_t read_host(std::FILE* file, void* destination, std::int64_t bytes) noexcept {
  const std::size_t got = std::fread(destination, 1, static_cast<std::size_t>(bytes), file);
  if (got < static_cast<std::size_t>(bytes) && std::ferror(file) != 0) return -1;
  return static_cast<std::int64_t>(got);
}

class PlanStream final : public nvinfer1::IStreamReaderV2 {
 public:
  explicit PlanStream(std::FILE* file) : file_(file) {}

  // TensorRT may ask for a piece to land in device memory (the weights): it goes through a
  // bounded host staging buffer, so host memory never holds more than one piece of the plan.
  std::int64_t read(void* destination, std::int64_t bytes, cudaStream_t stream) noexcept override {
    try {
      if (bytes <= 0) return 0;
      cudaPointerAttributes attributes{};
      const bool device = cudaPointerGetAttributes(&attributes, destination) == cudaSuccess &&
                          attributes.type == cudaMemoryTypeDevice;
      cudaGetLastError();  // an unregistered host pointer is not an error worth keeping
      if (!device) return read_host(file_, destination, bytes);
      if (staging_.empty()) staging_.resize(kStagingBytes);
      std::int64_t done = 0;
      while (done < bytes) {
        const std::int64_t want = std::min<std::int64_t>(bytes - done, static_cast<std::int64_t>(kStagingBytes));
        const std::int64_t got = read_host(file_, staging_.data(), want);
        if (got < 0) return -1;
        if (got == 0) break;
        if (cudaMemcpyAsync(static_cast<char*>(destination) + done, staging_.data(), static_cast<std::size_t>(got),
                            cudaMemcpyHostToDevice, stream) != cudaSuccess ||
            cudaStreamSynchronize(stream) != cudaSuccess) {  // the staging buffer is reused next
          return -1;
        }
        done += got;
      }
      return done;
    } catch (...) {  // staging allocation failed: TensorRT sees an I/O error
      return -1;
    }
  }

  bool seek(std::int64_t offset, nvinfer1::SeekPosition where) noexcept override {
    const int whence = where == nvinfer1::SeekPosition::kSET ? SEEK_SET
                       : where == nvinfer1::SeekPosition::kCUR ? SEEK_CUR
                                                                : SEEK_END;
    return fseeko(file_, static_cast<off_t>(offset), whence) == 0;
  }

 private:
  static constexpr std::size_t kStagingBytes = 8u << 20;
  std::FILE* file_;
  std::vector<char> staging_;
};
#else
// TensorRT before 10.7: IStreamReader saves host memory only with weight streaming on (its
// NvInferRuntime.h says so), otherwise it gathers the whole plan in host memory first. The file is
// mapped instead and TensorRT reads the mapping: page cache the kernel can drop, not a second,
// anonymous copy of the weights.
class MappedPlan {
 public:
  explicit MappedPlan(std::FILE* file) {
    struct stat info {};
    if (fstat(fileno(file), &info) != 0 || info.st_size <= 0) return;
    void* const address = mmap(nullptr, static_cast<std::size_t>(info.st_size), PROT_READ, MAP_PRIVATE, fileno(file), 0);
    if (address == MAP_FAILED) return;
    address_ = address;
    size_ = static_cast<std::size_t>(info.st_size);
    madvise(address_, size_, MADV_SEQUENTIAL);  // read once, front to back
  }
  ~MappedPlan() {
    if (address_ != nullptr) munmap(address_, size_);
  }
  MappedPlan(const MappedPlan&) = delete;
  MappedPlan& operator=(const MappedPlan&) = delete;

  const void* data() const { return address_; }
  std::size_t size() const { return size_; }

 private:
  void* address_ = nullptr;
  std::size_t size_ = 0;
};
#endif

}  // namespace

std::unique_ptr<nvinfer1::ICudaEngine> load_plan(nvinfer1::IRuntime& runtime, const std::string& path) {
  const File file(std::fopen(path.c_str(), "rb"));
  if (!file) {
    throw EngineError("cannot open the TensorRT plan " + path +
                      "; build it on this device with: sdar-export ARTIFACT --engine trt");
  }
#if SDAR_TRT_STREAM_READER_V2
  PlanStream stream(file.get());
  return std::unique_ptr<nvinfer1::ICudaEngine>(runtime.deserializeCudaEngine(stream));
#else
  const MappedPlan plan(file.get());
  if (plan.data() == nullptr) {
    throw EngineError("cannot map the TensorRT plan " + path + " (empty or unreadable); build it on this device with: "
                      "sdar-export ARTIFACT --engine trt");
  }
  return std::unique_ptr<nvinfer1::ICudaEngine>(runtime.deserializeCudaEngine(plan.data(), plan.size()));
#endif
}

}  // namespace sdar::trt
