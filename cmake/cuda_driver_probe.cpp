// Configure-time probe for SDAR_WITH_CUDA=AUTO: can this machine run CUDA kernels? Loads the CUDA
// driver library at run time (no CUDA headers or toolkit needed), initialises it and counts the
// GPUs. Prints one line saying what it found; exits 0 when at least one GPU is usable.
// With --describe (tests/gpu/check.sh), prints GPU 0 instead, from the driver (no nvidia-smi, which
// JetPack does not ship): "name<TAB>compute capability<TAB>integrated 0|1<TAB>driver CUDA version".
#include <cstdio>
#include <cstring>

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

int main(int argc, char** argv) {
  const bool describe = argc > 1 && std::strcmp(argv[1], "--describe") == 0;
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
  if (!describe) {
    std::printf("%d GPU(s) usable through the NVIDIA driver", gpus);
    return 0;
  }
  using GetFn = int (*)(int*, int);
  using NameFn = int (*)(char*, int, int);
  using AttributeFn = int (*)(int*, int, int);
  using VersionFn = int (*)(int*);
  const auto get = reinterpret_cast<GetFn>(symbol(driver, "cuDeviceGet"));
  const auto name = reinterpret_cast<NameFn>(symbol(driver, "cuDeviceGetName"));
  const auto attribute = reinterpret_cast<AttributeFn>(symbol(driver, "cuDeviceGetAttribute"));
  const auto version = reinterpret_cast<VersionFn>(symbol(driver, "cuDriverGetVersion"));
  int device = 0, major = 0, minor = 0, integrated = 0, cuda = 0;
  char label[256] = {};
  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR = 75 / 76, CU_DEVICE_ATTRIBUTE_INTEGRATED = 18
  if (get == nullptr || name == nullptr || attribute == nullptr || version == nullptr || get(&device, 0) != 0 ||
      name(label, static_cast<int>(sizeof(label)), device) != 0 || attribute(&major, 75, device) != 0 ||
      attribute(&minor, 76, device) != 0 || attribute(&integrated, 18, device) != 0 || version(&cuda) != 0) {
    std::printf("the NVIDIA driver does not describe GPU 0");
    return 1;
  }
  std::printf("%s\t%d.%d\t%d\t%d.%d\n", label, major, minor, integrated, cuda / 1000, cuda % 1000 / 10);
  return 0;
}
