#pragma once
// FA_HD marks code that runs on both host and device: the activation functors,
// the math helpers and the Philox generator are written once and compiled by
// g++ for the CPU kernels and by nvcc for the CUDA kernels.
#if defined(__CUDACC__)
#define FA_HD __host__ __device__ __forceinline__
#else
#define FA_HD inline
#endif

// Removes the parentheses around a macro argument: FA_STRIP (double, double)
// expands to `double, double`. The op list writes C++ argument types this way.
#define FA_STRIP(...) __VA_ARGS__

// CPU loops built three times: AVX-512 and AVX2 copies that the loader picks
// on CPUs that have them (with libmvec's 16- and 8-wide exp/log/tanh) and a
// baseline copy for the rest.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__ELF__) && \
    !defined(__CUDACC__)
#define FA_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FA_CPU_CLONES
#endif
