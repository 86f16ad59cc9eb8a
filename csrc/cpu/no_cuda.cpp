// Build facts of a CPU-only build (compiled instead of cuda/info.cu).
#include <string>

#include "fastact/build_info.h"

namespace fastact {
bool cuda_compiled() { return false; }
std::string cuda_runtime_info() { return ""; }
}  // namespace fastact
