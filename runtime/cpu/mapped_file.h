// A read-only memory mapping of a file (the CPU engine's packed weights): the kernels read the
// weights straight from the page cache, so the process holds no second copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace sdar::cpu {

class MappedFile {
 public:
  // Throws InvalidArgument naming the path and the reason (missing, unreadable, empty).
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace sdar::cpu
