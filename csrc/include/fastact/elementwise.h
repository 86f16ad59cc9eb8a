#pragma once
// What an elementwise kernel sees, on CPU and CUDA alike.
//
// Every operand is a [rows, inner] array: elements of a row are contiguous and
// rows are `stride` elements apart. A dense tensor is a single row. The packed
// GLU form is rows of 2*inner elements with the gate half at +0 and the up half
// at +inner, so the same kernels read it without a split or a copy. The
// pair-interleaved GLU form (gate at even, up at odd positions of the last
// dim) is read in place too: an operand flagged in PAIRED_IN / PAIRED_OUT
// takes every other element of its row (element j of the row at 2*j), so
// gate and up are two paired operands one element apart.
//
// An op adapter turns a functor into what the launcher calls per element:
//   op(index, in[NIN], out[NOUT])  with values in the opmath type.
// `index` is the element's position in [0, rows*inner), for ops whose
// parameters depend on it (per-channel prelu weight, per-feature swish beta,
// random draws keyed by element).
#include <cstdint>

#include "fastact/macros.h"

namespace fastact {

// Element spacing inside a row of operand k: 2 where bit k of a PAIRED mask
// is set, else 1. A compile-time constant, so the CPU loops vectorize the
// stride-2 accesses and the dense instantiations are unchanged.
constexpr int64_t operand_step(unsigned paired_mask, int k) { return (paired_mask >> k) & 1u ? 2 : 1; }

template <class scalar_t, int NIN, int NOUT, unsigned PAIRED_IN = 0, unsigned PAIRED_OUT = 0>
struct ElementwiseArgs {
  static constexpr int kIn = NIN;
  static constexpr int kOut = NOUT;
  static constexpr bool kDense = PAIRED_IN == 0 && PAIRED_OUT == 0;
  static constexpr int64_t in_step(int k) { return operand_step(PAIRED_IN, k); }
  static constexpr int64_t out_step(int k) { return operand_step(PAIRED_OUT, k); }
  const scalar_t* in[NIN];
  int64_t in_stride[NIN];
  scalar_t* out[NOUT];
  int64_t out_stride[NOUT];
  int64_t rows;
  int64_t inner;
  int64_t numel() const { return rows * inner; }
};

// Ops that draw a uniform per element declare kRandom and are called as
//   op(index, u, in[NIN], out[NOUT])
// with u the Philox draw number `index` of the stream (seed, offset) the op
// reports through rng(); the launchers make one Philox call per four
// consecutive elements and hand out all four draws.
template <class Op, class = void>
struct IsRandomOp {
  static constexpr bool value = false;
};
template <class Op>
struct IsRandomOp<Op, decltype(void(Op::kRandom))> {
  static constexpr bool value = Op::kRandom;
};

// Functors that define a whole gated unit, fwd(gate, up) and
// bwd(gate, up, dy, d_gate, d_up), declare kGated; the others are an
// activation of the gate that multiplies up.
template <class F, class = void>
struct IsGatedFunctor {
  static constexpr bool value = false;
};
template <class F>
struct IsGatedFunctor<F, decltype(void(F::kGated))> {
  static constexpr bool value = F::kGated;
};

// y = f(x)
template <class F>
struct UnaryFwd {
  static constexpr int kIn = 1, kOut = 1;
  F f;
  template <class T> FA_HD void operator()(int64_t, const T* in, T* out) const {
    out[0] = f.fwd(in[0]);
  }
};

// dx = dy * f'(x); inputs (dy, x)
template <class F>
struct UnaryBwd {
  static constexpr int kIn = 2, kOut = 1;
  F f;
  template <class T> FA_HD void operator()(int64_t, const T* in, T* out) const {
    out[0] = f.bwd(in[1], in[0]);
  }
};

// y = f(gate) * up (or a gated functor's f(gate, up)); inputs (gate, up)
template <class F>
struct GatedFwd {
  static constexpr int kIn = 2, kOut = 1;
  F f;
  template <class T> FA_HD void operator()(int64_t, const T* in, T* out) const {
    if constexpr (IsGatedFunctor<F>::value) {
      out[0] = f.fwd(in[0], in[1]);
    } else {
      out[0] = f.fwd(in[0]) * in[1];
    }
  }
};

// d_gate = f'(gate) * dy * up, d_up = f(gate) * dy (or a gated functor's
// bwd); inputs (dy, gate, up)
template <class F>
struct GatedBwd {
  static constexpr int kIn = 3, kOut = 2;
  F f;
  template <class T> FA_HD void operator()(int64_t, const T* in, T* out) const {
    if constexpr (IsGatedFunctor<F>::value) {
      f.bwd(in[1], in[2], in[0], out[0], out[1]);
    } else {
      out[0] = f.bwd(in[1], in[0] * in[2]);
      out[1] = f.fwd(in[1]) * in[0];
    }
  }
};

}  // namespace fastact
