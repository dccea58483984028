#include "mapped_file.h"

#include <cerrno>
#include <cstring>

#include "errors.h"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define SDAR_HAVE_MMAP 1
#endif

namespace sdar::cpu {

#ifdef SDAR_HAVE_MMAP

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InvalidArgument(path + ": cannot open the CPU engine's weight file (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw InvalidArgument(path + ": cannot stat the CPU engine's weight file (" + std::strerror(err) + ")");
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ == 0) {
    ::close(fd);
    throw InvalidArgument(path + ": the CPU engine's weight file is empty");
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file
  if (p == MAP_FAILED) throw InvalidArgument(path + ": cannot map the CPU engine's weight file (" + std::strerror(err) + ")");
  // Start reading it in now, in the background: the first step then finds it in the page cache.
  ::madvise(p, size_, MADV_WILLNEED);
  data_ = static_cast<const std::uint8_t*>(p);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<std::uint8_t*>(data_), size_);
}

#else

MappedFile::MappedFile(const std::string& path) : path_(path) {
  throw InvalidArgument(path + ": the CPU engine maps its weight file, which this platform's build does not support; "
                        "use engine='ort'");
}

MappedFile::~MappedFile() = default;

#endif

}  // namespace sdar::cpu
