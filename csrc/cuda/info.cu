// Build facts of the CUDA part (this file is compiled only in CUDA builds).
#include <cuda_runtime_api.h>

#include <string>

#include "fastact/build_info.h"

namespace fastact {
bool cuda_compiled() { return true; }
std::string cuda_runtime_info() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
}
}  // namespace fastact
