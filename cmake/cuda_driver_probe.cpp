// Configure-time probe for SDAR_WITH_CUDA=AUTO: can this machine run CUDA kernels? Loads the CUDA
// driver library at run time (no CUDA headers or toolkit needed), initialises it and counts the
// GPUs. Prints one line saying what it found; exits 0 when at least one GPU is usable.
#include <cstdio>

#ifdef _WIN32
#include <windows.h>
#define SDAR_DRIVER_LIBRARY "nvcuda.dll"
#else
#include <dlfcn.h>
#define SDAR_DRIVER_LIBRARY "libcuda.so.1"
#endif

namespace {

void* load_driver() {
#ifdef _WIN32
  return reinterpret_cast<void*>(LoadLibraryA(SDAR_DRIVER_LIBRARY));
#else
  return dlopen(SDAR_DRIVER_LIBRARY, RTLD_NOW | RTLD_LOCAL);
#endif
}

void* symbol(void* library, const char* name) {
#ifdef _WIN32
  return reinterpret_cast<void*>(GetProcAddress(static_cast<HMODULE>(library), name));
#else
  return dlsym(library, name);
#endif
}

}  // namespace

int main() {
  void* const driver = load_driver();
  if (driver == nullptr) {
    std::printf("no NVIDIA driver (%s not found)", SDAR_DRIVER_LIBRARY);
    return 1;
  }
  using InitFn = int (*)(unsigned int);
  using CountFn = int (*)(int*);
  const auto init = reinterpret_cast<InitFn>(symbol(driver, "cuInit"));
  const auto count = reinterpret_cast<CountFn>(symbol(driver, "cuDeviceGetCount"));
  if (init == nullptr || count == nullptr) {
    std::printf("%s lacks cuInit/cuDeviceGetCount", SDAR_DRIVER_LIBRARY);
    return 1;
  }
  const int status = init(0);
  if (status != 0) {
    std::printf("the NVIDIA driver reports no usable GPU (cuInit error %d)", status);
    return 1;
  }
  int gpus = 0;
  if (count(&gpus) != 0 || gpus < 1) {
    std::printf("the NVIDIA driver reports no GPU");
    return 1;
  }
  std::printf("%d GPU(s) usable through the NVIDIA driver", gpus);
  return 0;
}
