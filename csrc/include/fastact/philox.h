#pragma once
// Philox 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
// 3", SC'11), the counter-based generator behind curand and torch's CUDA
// generator, written once for host and device.
//
// Random value i of a stream (seed, offset) is a pure function of the three:
// key = seed, counter = (i / 4, offset | 2^63), and lane i % 4 of the four
// 32-bit outputs. The CPU and CUDA kernels therefore draw the identical
// numbers, and a backward pass regenerates exactly the forward's draws.
// The top bit of the counter's high half keeps our counters apart from those
// of torch's own CUDA random kernels under the same generator seed: curand's
// Philox puts the thread index (< 2^63) there, so without the bit a torch
// kernel whose thread index equals our offset would draw our mask's numbers.
// (Offsets are therefore taken modulo 2^63.)
#include <cstdint>

#include "fastact/macros.h"

namespace fastact {

struct Philox4x32 {
  uint32_t v[4];
};

FA_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// The four 32-bit outputs for counter group `group` of stream (seed, offset).
FA_HD Philox4x32 philox4x32_10(uint64_t seed, uint64_t offset, uint64_t group) {
  uint32_t c0 = static_cast<uint32_t>(group), c1 = static_cast<uint32_t>(group >> 32);
  uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32) | 0x80000000u;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(0xD2511F53u, c0, &hi0);
    const uint32_t lo1 = mulhilo32(0xCD9E8D57u, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// Output `lane` (0..3) of r, by selects: an array indexed at run time would
// be put in local memory on the GPU (a stack frame per thread).
FA_HD uint32_t philox_lane(const Philox4x32& r, uint32_t lane) {
  return lane < 2 ? (lane == 0 ? r.v[0] : r.v[1]) : (lane == 2 ? r.v[2] : r.v[3]);
}

// A uniform float in [0, 1) with 24 random bits.
FA_HD float uint_to_uniform(uint32_t r) { return static_cast<float>(r >> 8) * (1.0f / 16777216.0f); }

// Uniform draw number `i` of stream (seed, offset).
FA_HD float philox_uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  return uint_to_uniform(philox_lane(philox4x32_10(seed, offset, i >> 2), static_cast<uint32_t>(i & 3)));
}

}  // namespace fastact
