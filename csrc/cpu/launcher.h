#pragma once
// The CPU elementwise launcher: at::parallel_for over elements, and inside
// each chunk one `omp simd` loop that loads scalar_t, calls the op adapter in
// opmath, and stores. With libmvec the transcendental calls in the functors
// vectorize (see math.h); target_clones builds an AVX2 copy of the loop that
// the loader picks on CPUs that have it, and a baseline copy for the rest.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "fastact/elementwise.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__ELF__)
#define FA_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FA_CPU_CLONES
#endif

namespace fastact {

// Elements [begin, end) of one row segment: `index` of the first element,
// pointers already advanced to it.
template <class Op, class S, int NIN, int NOUT>
FA_CPU_CLONES void cpu_elementwise_segment(const Op& op, const S* const* in, S* const* out,
                                           int64_t index, int64_t count) {
  using T = at::opmath_type<S>;
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    T x[NIN];
    T y[NOUT];
    for (int k = 0; k < NIN; ++k) x[k] = static_cast<T>(in[k][j]);
    op(index + j, x, y);
    for (int k = 0; k < NOUT; ++k) out[k][j] = static_cast<S>(y[k]);
  }
}

struct CpuLauncher {
  // Below this many elements a chunk is not worth a thread.
  static constexpr int64_t kGrain = 32768;

  template <class Op, class S, int NIN, int NOUT>
  static void run(const Op& op, const ElementwiseArgs<S, NIN, NOUT>& a) {
    static_assert(Op::kIn == NIN && Op::kOut == NOUT, "op adapter and operands disagree");
    const int64_t n = a.numel();
    if (n == 0) return;
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      int64_t row = begin / a.inner;
      int64_t col = begin - row * a.inner;
      int64_t e = begin;
      while (e < end) {
        const int64_t count = std::min(a.inner - col, end - e);
        const S* in[NIN];
        S* out[NOUT];
        for (int k = 0; k < NIN; ++k) in[k] = a.in[k] + row * a.in_stride[k] + col;
        for (int k = 0; k < NOUT; ++k) out[k] = a.out[k] + row * a.out_stride[k] + col;
        cpu_elementwise_segment<Op, S, NIN, NOUT>(op, in, out, e, count);
        e += count;
        ++row;
        col = 0;
      }
    });
  }
};

}  // namespace fastact
