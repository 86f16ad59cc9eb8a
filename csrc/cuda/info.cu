// Build facts of the CUDA part (this file is compiled only in CUDA builds,
// and in the emulation build, where no CUDA runtime is linked).
#include <string>

#include "fastact/build_info.h"

#if defined(FASTACT_CUDA_EMULATION)
namespace fastact {
bool cuda_compiled() { return false; }
std::string cuda_runtime_info() { return "emulated"; }
}  // namespace fastact
#else
#include <cuda_runtime_api.h>

namespace fastact {
bool cuda_compiled() { return true; }
std::string cuda_runtime_info() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
}
}  // namespace fastact
#endif
