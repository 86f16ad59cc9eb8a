#pragma once
// bfloat16/float16 elementwise segments with the conversions in registers.
//
// The generic half-type path (cpu_elementwise_segment) widens blocks of 512
// into float arrays, runs the op's float loop and narrows the results: every
// value crosses L1 two or three extra times, which is what a memory-bound op
// (relu, hardtanh, ...) costs. Here each vector of W elements is widened by
// one instruction (F16C's vcvtph2ps; a shift for bfloat16), the op's scalar
// float code runs as a loop of exactly W iterations over it, and the result
// is narrowed by one instruction. The compiler vectorizes that loop (libmvec
// for its exp/log/...) and forwards the vector through the W-element stack
// arrays, so nothing but the tensors touches memory.
//
// One copy per instruction set: the body (half_segment_body.inc) is included
// once under `#pragma GCC target("avx512f")` and once under "avx2,f16c", the
// same targets as the float loops' clones (macros.h), so a half-type op
// computes in float exactly as a float tensor's. The caller picks a copy
// from half_convert::simd_level(); half_convert.cpp's block conversions
// are the same loads and stores (widen_n / narrow_n below).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

#include "cpu/half_convert.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#include <immintrin.h>
#define FA_HALF_SEGMENTS 1

// (the intrinsics' own _mm*_undefined operands, inlined into the segments)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace fastact::half_simd {

#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {
struct Isa {
  static constexpr int W = 16;
  using V = __m512;
  static V load(const c10::BFloat16* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static V load(const c10::Half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  // round to nearest even, NaN -> 0x7FC0 (half_convert::narrow)
  static void store(V f, c10::BFloat16* p) {
    const __m512i u = _mm512_castps_si512(f);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
  static void store(V f, c10::Half* p) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static void spill(V v, float* a) { _mm512_storeu_ps(a, v); }
  static V fill(const float* a) { return _mm512_loadu_ps(a); }
};
#include "cpu/half_segment_body.inc"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,f16c")
namespace avx2 {
struct Isa {
  static constexpr int W = 8;
  using V = __m256;
  static V load(const c10::BFloat16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static V load(const c10::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void store(V f, c10::BFloat16* p) {
    const __m256i u = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
    // every lane is below 2^16: packus keeps it
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
  static void store(V f, c10::Half* p) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static void spill(V v, float* a) { _mm256_storeu_ps(a, v); }
  static V fill(const float* a) { return _mm256_loadu_ps(a); }
};
#include "cpu/half_segment_body.inc"
}  // namespace avx2
#pragma GCC pop_options

}  // namespace fastact::half_simd
#pragma GCC diagnostic pop
#endif
