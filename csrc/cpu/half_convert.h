#pragma once
// bfloat16/float16 <-> float for the CPU loops. The half-precision kernels
// widen a block of each input to float, run the op's float loop over it
// (vectorized as for float tensors) and narrow the results: the conversions
// are the vector instructions torch's own kernels use (F16C's vcvtph2ps /
// vcvtps2ph; bfloat16 as the upper half of a float, rounded to nearest
// even with integer arithmetic), where compiler-vectorized c10 conversions
// cost more than the op itself. Bit-exact with c10::BFloat16 / c10::Half
// for every input (tests/test_half_convert.py: all 65536 inputs of each
// type, and float results rounded at every tie, overflow and subnormal).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace fastact::half_convert {

inline float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
inline uint32_t to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

// bfloat16: the upper half of a float; round to nearest even, NaN -> 0x7FC0
// (c10::detail::round_to_nearest_even).
inline float widen(c10::BFloat16 h) { return from_bits(uint32_t(h.x) << 16); }
inline void narrow(float f, c10::BFloat16& out) {
  const uint32_t u = to_bits(f);
  const uint16_t rounded = uint16_t((u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16);
  out.x = f != f ? uint16_t(0x7FC0) : rounded;
}

// IEEE binary16, branch-free (the FP16 library's fp16_ieee_to/from_fp32_value,
// which c10::Half uses without F16C), with the selects written as masks.
inline float widen(c10::Half h) {
  const uint32_t w = uint32_t(h.x) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t is_denormal = 0u - uint32_t(two_w < (1u << 27));
  return from_bits(sign | (is_denormal & to_bits(denormalized)) | (~is_denormal & to_bits(normalized)));
}
inline void narrow(float f, c10::Half& out) {
  float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = to_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias > 0x71000000u ? bias : 0x71000000u;
  base = from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t b = to_bits(base);
  const uint32_t nonsign = ((b >> 13) & 0x00007C00u) + (b & 0x00000FFFu);
  const uint32_t is_nan = 0u - uint32_t(shl1_w > 0xFF000000u);
  out.x = uint16_t((sign >> 16) | (is_nan & 0x7E00u) | (~is_nan & nonsign));
}

template <class S>
inline constexpr bool is_narrow = std::is_same_v<S, c10::BFloat16> || std::is_same_v<S, c10::Half>;

// n elements, with the CPU's vector conversions where it has them (picked
// once at load: AVX-512F, AVX2 (+F16C for float16), else the scalar forms
// above). Defined in half_convert.cpp.
void widen_n(const c10::BFloat16* src, float* dst, int64_t n);
void widen_n(const c10::Half* src, float* dst, int64_t n);
void narrow_n(const float* src, c10::BFloat16* dst, int64_t n);
void narrow_n(const float* src, c10::Half* dst, int64_t n);
// Which of those copies was picked: 2 AVX-512F, 1 AVX2 with F16C, 0 scalar.
// The elementwise launcher picks its in-register segments (half_segment.h)
// by the same level.
int simd_level();

// One row of a row kernel (softmax, cross-entropy) in opmath: a bfloat16/
// float16 row is widened into a float buffer the kernel then reads and may
// overwrite with its result (narrowed back by `store`); other types are
// used in place. One per thread, reused across its rows.
template <class S>
struct WideRow {
  std::vector<float> buf;
  using T = std::conditional_t<is_narrow<S>, float, S>;
  const T* load(const S* p, int64_t n) {
    if constexpr (is_narrow<S>) {
      buf.resize(static_cast<size_t>(n));
      widen_n(p, buf.data(), n);
      return buf.data();
    } else {
      return p;
    }
  }
  // the kernel's output row: the buffer (narrow types) or `p` itself
  T* out(S* p, int64_t n) {
    if constexpr (is_narrow<S>) {
      buf.resize(static_cast<size_t>(n));
      return buf.data();
    } else {
      return p;
    }
  }
  void store(S* p, int64_t n) {
    if constexpr (is_narrow<S>) narrow_n(buf.data(), p, n);
  }
};

}  // namespace fastact::half_convert
