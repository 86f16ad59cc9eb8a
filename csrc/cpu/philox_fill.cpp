// Philox uniforms for the CPU random kernels, 64 at a time with AVX-512F
// (see launcher.h, fill_uniforms): 16 counter groups per vector, one vector
// per Philox word; the 32x32->64-bit products of a round are two
// vpmuludq (even and odd lanes). The same numbers as philox4x32_10, which
// the compiler cannot vectorize well (its products are 64-bit scalars).
#include "cpu/philox_fill.h"

#include "cpu/half_convert.h"
#include "fastact/philox.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FA_X86_PHILOX 1
// (the AVX-512 intrinsics' own _mm512_undefined operands)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastact {

#if FA_X86_PHILOX
namespace {

// (lo, hi) of m * c for each 32-bit lane
__attribute__((target("avx512f"))) inline void mulhilo(__m512i m, __m512i c, __m512i& lo, __m512i& hi) {
  const __m512i even = _mm512_mul_epu32(c, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// uint_to_uniform of each lane
__attribute__((target("avx512f"))) inline __m512 to_uniform(__m512i r) {
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(r, 8)), _mm512_set1_ps(1.0f / 16777216.0f));
}

// draws 4 * g0 .. 4 * g0 + 64 * N - 1: counter groups g0 .. g0 + 16 * N - 1,
// which share the counter's high word (the caller checks). N independent
// vectors per round hide the latency of the multiplies.
template <int N>
__attribute__((target("avx512f"))) void philox_groups(uint64_t seed, uint64_t offset, uint64_t g0, float* u) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i c0[N], c1[N], c2[N], c3[N];
  for (int v = 0; v < N; ++v) {
    c0[v] = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(g0) + 16u * v)), lane);
    c1[v] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(g0 >> 32)));
    c2[v] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
    c3[v] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32) | 0x80000000u));
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int round = 0; round < 10; ++round) {
    const __m512i key0 = _mm512_set1_epi32(static_cast<int>(k0));
    const __m512i key1 = _mm512_set1_epi32(static_cast<int>(k1));
    for (int v = 0; v < N; ++v) {
      __m512i lo0, hi0, lo1, hi1;
      mulhilo(m0, c0[v], lo0, hi0);
      mulhilo(m1, c2[v], lo1, hi1);
      c0[v] = _mm512_xor_si512(_mm512_xor_si512(hi1, c1[v]), key0);
      c2[v] = _mm512_xor_si512(_mm512_xor_si512(hi0, c3[v]), key1);
      c1[v] = lo1;
      c3[v] = lo0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int v = 0; v < N; ++v) {
    // words (a, b, c, d) of 16 groups -> a0 b0 c0 d0 a1 b1 c1 d1 ...
    const __m512i a = _mm512_castps_si512(to_uniform(c0[v])), b = _mm512_castps_si512(to_uniform(c1[v]));
    const __m512i c = _mm512_castps_si512(to_uniform(c2[v])), d = _mm512_castps_si512(to_uniform(c3[v]));
    const __m512i t0 = _mm512_unpacklo_epi32(a, b), t1 = _mm512_unpackhi_epi32(a, b);
    const __m512i t2 = _mm512_unpacklo_epi32(c, d), t3 = _mm512_unpackhi_epi32(c, d);
    // r_k holds groups k, k + 4, k + 8, k + 12, one per 128-bit lane
    const __m512i r0 = _mm512_unpacklo_epi64(t0, t2), r1 = _mm512_unpackhi_epi64(t0, t2);
    const __m512i r2 = _mm512_unpacklo_epi64(t1, t3), r3 = _mm512_unpackhi_epi64(t1, t3);
    const __m512i s0 = _mm512_shuffle_i32x4(r0, r1, 0x44), s1 = _mm512_shuffle_i32x4(r2, r3, 0x44);
    const __m512i s2 = _mm512_shuffle_i32x4(r0, r1, 0xEE), s3 = _mm512_shuffle_i32x4(r2, r3, 0xEE);
    float* const d0 = u + 64 * v;
    _mm512_storeu_si512(d0, _mm512_shuffle_i32x4(s0, s1, 0x88));
    _mm512_storeu_si512(d0 + 16, _mm512_shuffle_i32x4(s0, s1, 0xDD));
    _mm512_storeu_si512(d0 + 32, _mm512_shuffle_i32x4(s2, s3, 0x88));
    _mm512_storeu_si512(d0 + 48, _mm512_shuffle_i32x4(s2, s3, 0xDD));
  }
}

}  // namespace

bool fill_uniforms_vectorized() {
  static const bool on = half_convert::simd_level() == 2;
  return on;
}

void fill_uniforms_avx512(uint64_t seed, uint64_t offset, int64_t index, int64_t count, float* u) {
  int64_t j = 0;
  for (; j < count && ((index + j) & 3) != 0; ++j)
    u[j] = philox_uniform(seed, offset, static_cast<uint64_t>(index + j));
  constexpr int N = 4, kDraws = 64 * N;
  for (; j + kDraws <= count; j += kDraws) {
    const uint64_t g0 = static_cast<uint64_t>(index + j) >> 2;
    if ((g0 >> 32) == ((g0 + 16 * N - 1) >> 32)) {
      philox_groups<N>(seed, offset, g0, u + j);
    } else {  // the groups straddle a 2^32 boundary of the counter
      for (int l = 0; l < kDraws; ++l)
        u[j + l] = philox_uniform(seed, offset, static_cast<uint64_t>(index + j + l));
    }
  }
  for (; j + 64 <= count; j += 64) {
    const uint64_t g0 = static_cast<uint64_t>(index + j) >> 2;
    if ((g0 >> 32) == ((g0 + 15) >> 32)) {
      philox_groups<1>(seed, offset, g0, u + j);
    } else {
      for (int l = 0; l < 64; ++l) u[j + l] = philox_uniform(seed, offset, static_cast<uint64_t>(index + j + l));
    }
  }
  for (; j < count; ++j) u[j] = philox_uniform(seed, offset, static_cast<uint64_t>(index + j));
}
#else
bool fill_uniforms_vectorized() { return false; }
void fill_uniforms_avx512(uint64_t, uint64_t, int64_t, int64_t, float*) {}
#endif

}  // namespace fastact
