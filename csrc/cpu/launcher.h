#pragma once
// The CPU elementwise launcher: at::parallel_for over elements, and inside
// each chunk one vectorizable loop that loads scalar_t, calls the op adapter
// in opmath, and stores. (`ivdep`, not `omp simd`: under `omp simd` GCC keeps
// the per-element operand arrays in memory as per-lane arrays and gives up on
// two or more inputs; plain auto-vectorization scalarizes them.) With libmvec the transcendental calls in the functors
// vectorize (see math.h); FA_CPU_CLONES (macros.h) builds AVX-512 and AVX2
// copies of the loop that the loader picks on CPUs that have them, and a
// baseline copy for the rest.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "fastact/elementwise.h"
#include "fastact/macros.h"
#include "fastact/philox.h"
#include "cpu/half_convert.h"
#include "cpu/philox_fill.h"
#include "cpu/half_segment.h"

namespace fastact {

// n half-type elements, `STEP` apart in the source (a paired operand: 2),
// widened into a float block, and the reverse.
template <int64_t STEP, class S, class T>
inline void widen_block(const S* s, T* d, int64_t n) {
  if constexpr (STEP == 1) {
    half_convert::widen_n(s, d, n);
  } else {
    for (int64_t j = 0; j < n; ++j) d[j] = half_convert::widen(s[j * STEP]);
  }
}
template <int64_t STEP, class S, class T>
inline void narrow_block(const T* s, S* d, int64_t n) {
  if constexpr (STEP == 1) {
    half_convert::narrow_n(s, d, n);
  } else {
    for (int64_t j = 0; j < n; ++j) half_convert::narrow(s[j], d[j * STEP]);
  }
}

// Elements [begin, end) of one row segment: `index` of the first element,
// pointers already advanced to it. Operands flagged in PAIRED_IN/PAIRED_OUT
// take every other element (ElementwiseArgs).
template <class Op, class S, int NIN, int NOUT, unsigned PAIRED_IN = 0, unsigned PAIRED_OUT = 0>
FA_CPU_CLONES void cpu_elementwise_segment(const Op& op, const S* const* in, S* const* out,
                                           int64_t index, int64_t count) {
  static_assert(NIN >= 1 && NIN <= 4 && NOUT >= 1 && NOUT <= 2, "operand count");
  using T = at::opmath_type<S>;
  constexpr int64_t si0 = operand_step(PAIRED_IN, 0), si1 = operand_step(PAIRED_IN, 1);
  constexpr int64_t si2 = operand_step(PAIRED_IN, 2), si3 = operand_step(PAIRED_IN, 3);
  constexpr int64_t so0 = operand_step(PAIRED_OUT, 0), so1 = operand_step(PAIRED_OUT, 1);
  // The vectorizer wants straight-line code over scalars: a local copy of the
  // op (its parameters become loop invariants, and a branch on one, like
  // gelu's form, is hoisted out of the loop) and one local per pointer (an
  // array of pointers would be reloaded from memory on every element).
  const Op local_op = op;
  const S* const i0 = in[0];
  const S* const i1 = NIN > 1 ? in[1] : nullptr;
  const S* const i2 = NIN > 2 ? in[2] : nullptr;
  const S* const i3 = NIN > 3 ? in[3] : nullptr;
  S* const o0 = out[0];
  S* const o1 = NOUT > 1 ? out[1] : nullptr;
  if constexpr (half_convert::is_narrow<S>) {
    // bfloat16/float16: blocks widened into float arrays, the op's float
    // loop over them (vectorized as for float tensors), then narrowed.
    namespace hc = half_convert;
    constexpr int64_t kBlock = 512;
    // bfloat16 inputs are widened inside the op's loop (a shift, which the
    // compiler vectorizes as well as the explicit conversion: one pass over
    // the block less); float16 inputs need F16C, so they go through blocks.
    constexpr bool kInline = std::is_same_v<S, c10::BFloat16>;
    alignas(64) T xb[NIN][kInline ? 1 : kBlock];
    alignas(64) T yb[NOUT][kBlock];
    for (int64_t b = 0; b < count; b += kBlock) {
      const int64_t n = std::min(kBlock, count - b);
      if constexpr (!kInline) {
        widen_block<si0>(i0 + b * si0, xb[0], n);
        if constexpr (NIN > 1) widen_block<si1>(i1 + b * si1, xb[1], n);
        if constexpr (NIN > 2) widen_block<si2>(i2 + b * si2, xb[2], n);
        if constexpr (NIN > 3) widen_block<si3>(i3 + b * si3, xb[3], n);
      }
      const T* const x0 = xb[0];
      const T* const x1 = xb[NIN > 1 ? 1 : 0];
      const T* const x2 = xb[NIN > 2 ? 2 : 0];
      const T* const x3 = xb[NIN > 3 ? 3 : 0];
      const S* const s0 = i0 + b * si0;
      const S* const s1 = NIN > 1 ? i1 + b * si1 : nullptr;
      const S* const s2 = NIN > 2 ? i2 + b * si2 : nullptr;
      const S* const s3 = NIN > 3 ? i3 + b * si3 : nullptr;
      T* const y0 = yb[0];
      T* const y1 = yb[NOUT > 1 ? 1 : 0];
#pragma GCC ivdep
      for (int64_t j = 0; j < n; ++j) {
        T x[NIN];
        T y[NOUT];
        if constexpr (kInline) {
          x[0] = hc::widen(s0[j * si0]);
          if constexpr (NIN > 1) x[1] = hc::widen(s1[j * si1]);
          if constexpr (NIN > 2) x[2] = hc::widen(s2[j * si2]);
          if constexpr (NIN > 3) x[3] = hc::widen(s3[j * si3]);
        } else {
          x[0] = x0[j];
          if constexpr (NIN > 1) x[1] = x1[j];
          if constexpr (NIN > 2) x[2] = x2[j];
          if constexpr (NIN > 3) x[3] = x3[j];
        }
        local_op(index + b + j, x, y);
        y0[j] = y[0];
        if constexpr (NOUT > 1) y1[j] = y[1];
      }
      narrow_block<so0>(yb[0], o0 + b * so0, n);
      if constexpr (NOUT > 1) narrow_block<so1>(yb[1], o1 + b * so1, n);
    }
    return;
  }
#pragma GCC ivdep
  for (int64_t j = 0; j < count; ++j) {
    T x[NIN];
    T y[NOUT];
    x[0] = static_cast<T>(i0[j * si0]);
    if constexpr (NIN > 1) x[1] = static_cast<T>(i1[j * si1]);
    if constexpr (NIN > 2) x[2] = static_cast<T>(i2[j * si2]);
    if constexpr (NIN > 3) x[3] = static_cast<T>(i3[j * si3]);
    local_op(index + j, x, y);
    o0[j * so0] = static_cast<S>(y[0]);
    if constexpr (NOUT > 1) o1[j * so1] = static_cast<S>(y[1]);
  }
}

// The draws number index .. index + count - 1 of stream (seed, offset):
// one Philox call per group of four, all four draws used.
inline void fill_uniforms(uint64_t seed, uint64_t offset, int64_t index, int64_t count, float* u) {
  int64_t j = 0;
  for (; j < count && ((index + j) & 3) != 0; ++j)
    u[j] = philox_uniform(seed, offset, static_cast<uint64_t>(index + j));
  const int64_t first = j, groups = (count - j) / 4;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t jj = first + 4 * g;
    const Philox4x32 r = philox4x32_10(seed, offset, static_cast<uint64_t>(index + jj) >> 2);
    u[jj] = uint_to_uniform(r.v[0]);
    u[jj + 1] = uint_to_uniform(r.v[1]);
    u[jj + 2] = uint_to_uniform(r.v[2]);
    u[jj + 3] = uint_to_uniform(r.v[3]);
  }
  for (j = first + 4 * groups; j < count; ++j)
    u[j] = philox_uniform(seed, offset, static_cast<uint64_t>(index + j));
}

// The same for ops that draw a uniform per element (kRandom): blocks of
// draws are generated first, then the op runs over the block as a plain
// vectorizable loop (the activation math stays SIMD).
template <class Op, class S, int NIN, int NOUT>
FA_CPU_CLONES void cpu_random_segment(const Op& op, const S* const* in, S* const* out,
                                      int64_t index, int64_t count) {
  static_assert(NIN >= 1 && NIN <= 3 && NOUT == 1, "operand count");
  using T = at::opmath_type<S>;
  constexpr int64_t kBlock = 1024;
  const Op local_op = op;
  const uint64_t seed = local_op.rng_seed(), offset = local_op.rng_offset();
  const S* const i0 = in[0];
  const S* const i1 = NIN > 1 ? in[1] : nullptr;
  const S* const i2 = NIN > 2 ? in[2] : nullptr;
  S* const o0 = out[0];
  float u[kBlock];
  const bool vector_draws = fill_uniforms_vectorized();
  // bfloat16/float16 operands widened into float blocks first (see
  // cpu_elementwise_segment); other types are read and written in place.
  constexpr bool kNarrow = half_convert::is_narrow<S>;
  using X = std::conditional_t<kNarrow, T, S>;  // what the op's loop reads and writes
  alignas(64) T xb[kNarrow ? NIN : 1][kNarrow ? kBlock : 1];
  alignas(64) T yb[kNarrow ? kBlock : 1];
  for (int64_t b = 0; b < count; b += kBlock) {
    const int64_t n = std::min(kBlock, count - b);
    if (vector_draws) {
      fill_uniforms_avx512(seed, offset, index + b, n, u);
    } else {
      fill_uniforms(seed, offset, index + b, n, u);
    }
    const X* x0;
    const X* x1;
    const X* x2;
    X* y0;
    if constexpr (kNarrow) {
      half_convert::widen_n(i0 + b, xb[0], n);
      if constexpr (NIN > 1) half_convert::widen_n(i1 + b, xb[NIN > 1 ? 1 : 0], n);
      if constexpr (NIN > 2) half_convert::widen_n(i2 + b, xb[NIN > 2 ? 2 : 0], n);
      x0 = xb[0];
      x1 = xb[NIN > 1 ? 1 : 0];
      x2 = xb[NIN > 2 ? 2 : 0];
      y0 = yb;
    } else {
      x0 = i0 + b;
      x1 = NIN > 1 ? i1 + b : nullptr;
      x2 = NIN > 2 ? i2 + b : nullptr;
      y0 = o0 + b;
    }
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) {
      T x[NIN];
      T y[1];
      x[0] = static_cast<T>(x0[j]);
      if constexpr (NIN > 1) x[1] = static_cast<T>(x1[j]);
      if constexpr (NIN > 2) x[2] = static_cast<T>(x2[j]);
      local_op(index + b + j, u[j], x, y);
      y0[j] = static_cast<X>(y[0]);
    }
    if constexpr (kNarrow) half_convert::narrow_n(yb, o0 + b, n);
  }
}

struct CpuLauncher {
  // Below this many elements a chunk is not worth a thread.
  static constexpr int64_t kGrain = 32768;

  template <class Op, class S, int NIN, int NOUT>
  using Segment = void (*)(const Op&, const S* const*, S* const*, int64_t, int64_t);

  // The segment function for this op and type: bfloat16/float16 ops that
  // draw nothing take the in-register copy of the CPU's instruction set
  // (half_segment.h) where there is one; paired operands (every other
  // element) take the generic loop, whose stride-2 accesses vectorize.
  template <class Op, class S, int NIN, int NOUT, unsigned PAIRED_IN, unsigned PAIRED_OUT>
  static Segment<Op, S, NIN, NOUT> segment_for() {
    if constexpr (IsRandomOp<Op>::value) {
      static_assert(PAIRED_IN == 0 && PAIRED_OUT == 0, "random ops take dense operands");
      return &cpu_random_segment<Op, S, NIN, NOUT>;
    } else if constexpr (PAIRED_IN != 0 || PAIRED_OUT != 0) {
      return &cpu_elementwise_segment<Op, S, NIN, NOUT, PAIRED_IN, PAIRED_OUT>;
    } else {
#if FA_HALF_SEGMENTS
      if constexpr (half_convert::is_narrow<S>) {
        switch (half_convert::simd_level()) {
          case 2: return &half_simd::avx512::segment<Op, S, NIN, NOUT>;
          case 1: return &half_simd::avx2::segment<Op, S, NIN, NOUT>;
          default: break;
        }
      }
#endif
      return &cpu_elementwise_segment<Op, S, NIN, NOUT>;
    }
  }

  template <class Op, class S, int NIN, int NOUT, unsigned PAIRED_IN, unsigned PAIRED_OUT>
  static void run(const Op& op, const ElementwiseArgs<S, NIN, NOUT, PAIRED_IN, PAIRED_OUT>& a) {
    static_assert(Op::kIn == NIN && Op::kOut == NOUT, "op adapter and operands disagree");
    using Args = ElementwiseArgs<S, NIN, NOUT, PAIRED_IN, PAIRED_OUT>;
    const int64_t n = a.numel();
    if (n == 0) return;
    const Segment<Op, S, NIN, NOUT> segment = segment_for<Op, S, NIN, NOUT, PAIRED_IN, PAIRED_OUT>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      int64_t row = begin / a.inner;
      int64_t col = begin - row * a.inner;
      int64_t e = begin;
      while (e < end) {
        const int64_t count = std::min(a.inner - col, end - e);
        const S* in[NIN];
        S* out[NOUT];
        for (int k = 0; k < NIN; ++k) in[k] = a.in[k] + row * a.in_stride[k] + col * Args::in_step(k);
        for (int k = 0; k < NOUT; ++k) out[k] = a.out[k] + row * a.out_stride[k] + col * Args::out_step(k);
        segment(op, in, out, e, count);
        e += count;
        ++row;
        col = 0;
      }
    });
  }
};

}  // namespace fastact
