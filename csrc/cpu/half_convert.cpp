// Vector bfloat16/float16 <-> float conversions (see half_convert.h), one
// copy per instruction set, picked once from what the CPU reports. The
// vector loops are those of half_segment.h (one load and store per
// instruction set, shared with the elementwise segments).
#include "cpu/half_convert.h"

#include <cstdlib>
#include <cstring>

#include "cpu/half_segment.h"

namespace fastact::half_convert {
namespace {

// the scalar forms of half_convert.h, on CPUs without the vector ones
template <class S>
void widen_scalar(const S* s, float* d, int64_t n) {
  for (int64_t j = 0; j < n; ++j) d[j] = widen(s[j]);
}
template <class S>
void narrow_scalar(const float* s, S* d, int64_t n) {
  for (int64_t j = 0; j < n; ++j) narrow(s[j], d[j]);
}

struct Table {
  void (*widen_bf16)(const c10::BFloat16*, float*, int64_t) = widen_scalar<c10::BFloat16>;
  void (*narrow_bf16)(const float*, c10::BFloat16*, int64_t) = narrow_scalar<c10::BFloat16>;
  void (*widen_f16)(const c10::Half*, float*, int64_t) = widen_scalar<c10::Half>;
  void (*narrow_f16)(const float*, c10::Half*, int64_t) = narrow_scalar<c10::Half>;
  int level = 0;  // simd_level()

  Table() {
#if FA_HALF_SEGMENTS
    // FASTACT_HALF_CONVERT=avx2|scalar caps the choice (the tests run every
    // copy on one machine)
    const char* cap = std::getenv("FASTACT_HALF_CONVERT");
    const bool allow512 = cap == nullptr || std::strcmp(cap, "avx512") == 0;
    const bool allow256 = allow512 || std::strcmp(cap, "avx2") == 0;
    __builtin_cpu_init();
    if (allow512 && __builtin_cpu_supports("avx512f")) {
      namespace v = half_simd::avx512;
      widen_bf16 = v::widen_n<c10::BFloat16>;
      narrow_bf16 = v::narrow_n<c10::BFloat16>;
      widen_f16 = v::widen_n<c10::Half>;
      narrow_f16 = v::narrow_n<c10::Half>;
      level = 2;
    } else if (allow256 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) {
      namespace v = half_simd::avx2;
      widen_bf16 = v::widen_n<c10::BFloat16>;
      narrow_bf16 = v::narrow_n<c10::BFloat16>;
      widen_f16 = v::widen_n<c10::Half>;
      narrow_f16 = v::narrow_n<c10::Half>;
      level = 1;
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
