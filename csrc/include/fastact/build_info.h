#pragma once
// What this binary was built with, as "key=value" lines; python/fastact
// parses it into fastact.build_info(). The FASTACT_* strings come from the
// build system (setup.py or CMakeLists.txt).
#include <string>

#include <torch/version.h>

#ifndef FASTACT_CUDA_ARCHS
#define FASTACT_CUDA_ARCHS ""
#endif
#ifndef FASTACT_VERSION
#define FASTACT_VERSION "0.0.0"
#endif

namespace fastact {

bool cuda_compiled();          // defined in cuda/ when compiled, else in cpu_only.cpp
std::string cuda_runtime_info();  // "CUDA version" of the toolkit used, or ""

inline std::string build_info_string() {
  std::string s;
  s += "version=" FASTACT_VERSION "\n";
  s += "torch_compiled_with=" + std::to_string(TORCH_VERSION_MAJOR) + "." +
       std::to_string(TORCH_VERSION_MINOR) + "." + std::to_string(TORCH_VERSION_PATCH) + "\n";
  s += std::string("cuda_compiled=") + (cuda_compiled() ? "1" : "0") + "\n";
  s += "cuda_version=" + cuda_runtime_info() + "\n";
  s += "cuda_archs=" FASTACT_CUDA_ARCHS "\n";
#if defined(__clang__)
  s += "compiler=clang " __clang_version__ "\n";
#elif defined(__GNUC__)
  s += "compiler=gcc " __VERSION__ "\n";
#endif
#ifdef FASTACT_USE_LIBMVEC
  s += "cpu_simd_math=libmvec\n";
#else
  s += "cpu_simd_math=none\n";
#endif
#ifdef FASTACT_CUDA_EMULATION
  s += "cuda_emulation=1\n";
#else
  s += "cuda_emulation=0\n";
#endif
#ifdef _OPENMP
  s += "openmp=1\n";
#else
  s += "openmp=0\n";
#endif
  return s;
}

}  // namespace fastact
