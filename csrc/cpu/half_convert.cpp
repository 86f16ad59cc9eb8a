// Vector bfloat16/float16 <-> float conversions (see half_convert.h), one
// copy per instruction set, picked once from what the CPU reports.
#include "cpu/half_convert.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FA_X86_CONVERT 1
// (the AVX-512 intrinsics' own _mm512_undefined operands)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastact::half_convert {
namespace {

// the scalar forms of half_convert.h: the tails of the vector loops, and
// every element on CPUs without them
template <class S>
void widen_scalar(const S* s, float* d, int64_t n) {
  for (int64_t j = 0; j < n; ++j) d[j] = widen(s[j]);
}
template <class S>
void narrow_scalar(const float* s, S* d, int64_t n) {
  for (int64_t j = 0; j < n; ++j) narrow(s[j], d[j]);
}

#if FA_X86_CONVERT
// ---- AVX-512F: 16 per instruction ----
__attribute__((target("avx512f"))) void widen_bf16_avx512(const c10::BFloat16* s, float* d, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + j));
    _mm512_storeu_ps(d + j, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
  widen_scalar(s + j, d + j, n - j);
}
__attribute__((target("avx512f"))) void narrow_bf16_avx512(const float* s, c10::BFloat16* d, int64_t n) {
  int64_t j = 0;
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF), qnan = _mm512_set1_epi32(0x7FC0);
  for (; j + 16 <= n; j += 16) {
    const __m512 f = _mm512_loadu_ps(s + j);
    const __m512i u = _mm512_castps_si512(f);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, bias)), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), qnan);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j), _mm512_cvtepi32_epi16(r));
  }
  narrow_scalar(s + j, d + j, n - j);
}
__attribute__((target("avx512f"))) void widen_f16_avx512(const c10::Half* s, float* d, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    _mm512_storeu_ps(d + j, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + j))));
  widen_scalar(s + j, d + j, n - j);
}
__attribute__((target("avx512f"))) void narrow_f16_avx512(const float* s, c10::Half* d, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j),
                        _mm512_cvtps_ph(_mm512_loadu_ps(s + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  narrow_scalar(s + j, d + j, n - j);
}

// ---- AVX2 (+F16C): 8 per instruction ----
__attribute__((target("avx2"))) void widen_bf16_avx2(const c10::BFloat16* s, float* d, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j));
    _mm256_storeu_ps(d + j, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
  }
  widen_scalar(s + j, d + j, n - j);
}
__attribute__((target("avx2"))) void narrow_bf16_avx2(const float* s, c10::BFloat16* d, int64_t n) {
  int64_t j = 0;
  const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF), qnan = _mm256_set1_epi32(0x7FC0);
  for (; j + 16 <= n; j += 16) {
    __m256i r[2];
    for (int k = 0; k < 2; ++k) {
      const __m256 f = _mm256_loadu_ps(s + j + 8 * k);
      const __m256i u = _mm256_castps_si256(f);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
      const __m256i v = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, bias)), 16);
      r[k] = _mm256_blendv_epi8(v, qnan, _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
    }
    // packus works per 128-bit lane: restore the order after packing
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j), packed);
  }
  narrow_scalar(s + j, d + j, n - j);
}
__attribute__((target("avx2,f16c"))) void widen_f16_f16c(const c10::Half* s, float* d, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(d + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j))));
  widen_scalar(s + j, d + j, n - j);
}
__attribute__((target("avx2,f16c"))) void narrow_f16_f16c(const float* s, c10::Half* d, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + j),
                     _mm256_cvtps_ph(_mm256_loadu_ps(s + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  narrow_scalar(s + j, d + j, n - j);
}
#endif

struct Table {
  void (*widen_bf16)(const c10::BFloat16*, float*, int64_t) = widen_scalar<c10::BFloat16>;
  void (*narrow_bf16)(const float*, c10::BFloat16*, int64_t) = narrow_scalar<c10::BFloat16>;
  void (*widen_f16)(const c10::Half*, float*, int64_t) = widen_scalar<c10::Half>;
  void (*narrow_f16)(const float*, c10::Half*, int64_t) = narrow_scalar<c10::Half>;
  int level = 0;  // simd_level()
  Table() {
#if FA_X86_CONVERT
    // FASTACT_HALF_CONVERT=avx2|scalar caps the choice (the tests run every
    // copy on one machine)
    const char* cap = std::getenv("FASTACT_HALF_CONVERT");
    const bool allow512 = cap == nullptr || std::strcmp(cap, "avx512") == 0;
    const bool allow256 = allow512 || std::strcmp(cap, "avx2") == 0;
    __builtin_cpu_init();
    if (allow512 && __builtin_cpu_supports("avx512f")) {
      widen_bf16 = widen_bf16_avx512;
      narrow_bf16 = narrow_bf16_avx512;
      widen_f16 = widen_f16_avx512;
      narrow_f16 = narrow_f16_avx512;
      level = 2;
    } else if (allow256 && __builtin_cpu_supports("avx2")) {
      widen_bf16 = widen_bf16_avx2;
      narrow_bf16 = narrow_bf16_avx2;
      if (__builtin_cpu_supports("f16c")) {
        widen_f16 = widen_f16_f16c;
        narrow_f16 = narrow_f16_f16c;
        level = 1;
      }
    }
#endif
  }
};
const Table& table() {
  static const Table t;
  return t;
}

}  // namespace

int simd_level() { return table().level; }
void widen_n(const c10::BFloat16* src, float* dst, int64_t n) { table().widen_bf16(src, dst, n); }
void widen_n(const c10::Half* src, float* dst, int64_t n) { table().widen_f16(src, dst, n); }
void narrow_n(const float* src, c10::BFloat16* dst, int64_t n) { table().narrow_bf16(src, dst, n); }
void narrow_n(const float* src, c10::Half* dst, int64_t n) { table().narrow_f16(src, dst, n); }

}  // namespace fastact::half_convert
