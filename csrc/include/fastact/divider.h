#pragma once
// n / d by a multiply-high and a shift instead of a division, for divisors
// fixed at launch (Granlund and Montgomery, "Division by invariant integers
// using multiplication", PLDI'94; ATen's IntDivider). The GPU has no integer
// divider: a 64-bit `/` or `%` is a loop of some 70 instructions, a 32-bit one
// some 20, this is 3. Exact for n and d in [1, 2^31) (n may be 0).
#include <cstdint>

#include "fastact/macros.h"

namespace fastact {

struct Divider32 {
  uint32_t divisor = 1, magic = 1, shift = 0;

  Divider32() = default;
  explicit Divider32(uint32_t d) : divisor(d) {
    while (shift < 32 && (uint64_t{1} << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }
  FA_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t t = __umulhi(n, magic);
#else
    const uint32_t t = static_cast<uint32_t>((static_cast<uint64_t>(n) * magic) >> 32);
#endif
    return (t + n) >> shift;  // t <= n < 2^31: no overflow
  }
  FA_HD uint32_t mod(uint32_t n) const { return n - div(n) * divisor; }
};

}  // namespace fastact
