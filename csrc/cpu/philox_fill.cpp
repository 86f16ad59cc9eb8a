// Philox uniforms for the CPU random kernels with AVX-512F (see launcher.h,
// fill_uniforms): 8 counter groups (32 draws) per vector, one vector per
// Philox word. The same numbers as philox4x32_10, which the compiler cannot
// vectorize well (its products are 64-bit scalars).
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

// uint_to_uniform of each 32-bit lane
__attribute__((target("avx512f"))) inline __m512 to_uniform(__m512i r) {
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(r, 8)), _mm512_set1_ps(1.0f / 16777216.0f));
}

// Draws 4 * g0 .. 4 * g0 + 32 * N - 1 (counter groups g0 .. g0 + 8 * N - 1)
// into u. Each Philox word of 8 groups sits in the low halves of the 64-bit
// lanes of one vector, where vpmuludq reads it and leaves the whole product:
// a round is two multiplies, two shifts and two three-way XORs per 8 groups.
// (The upper halves carry junk that neither the multiplies nor the final
// narrowing read.) N independent vectors per round hide the multiplies'
// latency.
template <int N>
__attribute__((target("avx512f"))) void philox_groups(uint64_t seed, uint64_t offset, uint64_t g0, float* u) {
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  __m512i c0[N], c1[N], c2[N], c3[N];
  const __m512i off_lo = _mm512_set1_epi64(static_cast<long long>(static_cast<uint32_t>(offset)));
  const __m512i off_hi =
      _mm512_set1_epi64(static_cast<long long>(static_cast<uint32_t>(offset >> 32) | 0x80000000u));
  for (int v = 0; v < N; ++v) {
    const __m512i group = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(g0 + 8 * v)), lane);
    c0[v] = group;                           // low word of the group index
    c1[v] = _mm512_srli_epi64(group, 32);    // high word
    c2[v] = off_lo;
    c3[v] = off_hi;
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53ll);
  const __m512i m1 = _mm512_set1_epi64(0xCD9E8D57ll);
  for (int round = 0; round < 10; ++round) {
    const __m512i key0 = _mm512_set1_epi64(static_cast<long long>(k0));
    const __m512i key1 = _mm512_set1_epi64(static_cast<long long>(k1));
    for (int v = 0; v < N; ++v) {
      const __m512i p0 = _mm512_mul_epu32(c0[v], m0);
      const __m512i p1 = _mm512_mul_epu32(c2[v], m1);
      c0[v] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1[v], key0, 0x96);  // a ^ b ^ c
      c2[v] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3[v], key1, 0x96);
      c1[v] = p1;
      c3[v] = p0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
  const __m512i second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  for (int v = 0; v < N; ++v) {
    // words (a, b, c, d) of groups 0..7 -> a0 b0 c0 d0 a1 b1 c1 d1 ...
    const __m512i ab = _mm512_castps_si512(
        to_uniform(_mm512_mask_blend_epi32(0xAAAA, c0[v], _mm512_slli_epi64(c1[v], 32))));
    const __m512i cd = _mm512_castps_si512(
        to_uniform(_mm512_mask_blend_epi32(0xAAAA, c2[v], _mm512_slli_epi64(c3[v], 32))));
    const __m512i even = _mm512_unpacklo_epi64(ab, cd);  // groups 0, 2, 4, 6 (one per 128-bit lane)
    const __m512i odd = _mm512_unpackhi_epi64(ab, cd);   // groups 1, 3, 5, 7
    float* const d = u + 32 * v;
    _mm512_storeu_si512(d, _mm512_permutex2var_epi64(even, first, odd));
    _mm512_storeu_si512(d + 16, _mm512_permutex2var_epi64(even, second, odd));
  }
}

}  // namespace

bool fill_uniforms_vectorized() { return half_convert::simd_level() == 2; }

void fill_uniforms_avx512(uint64_t seed, uint64_t offset, int64_t index, int64_t count, float* u) {
  int64_t j = 0;
  for (; j < count && ((index + j) & 3) != 0; ++j)
    u[j] = philox_uniform(seed, offset, static_cast<uint64_t>(index + j));
  constexpr int N = 8, kDraws = 32 * N;
  for (; j + kDraws <= count; j += kDraws) philox_groups<N>(seed, offset, static_cast<uint64_t>(index + j) >> 2, u + j);
  for (; j + 32 <= count; j += 32) philox_groups<1>(seed, offset, static_cast<uint64_t>(index + j) >> 2, u + j);
  for (; j < count; ++j) u[j] = philox_uniform(seed, offset, static_cast<uint64_t>(index + j));
}
#else
bool fill_uniforms_vectorized() { return false; }
void fill_uniforms_avx512(uint64_t, uint64_t, int64_t, int64_t, float*) {}
#endif

}  // namespace fastact
