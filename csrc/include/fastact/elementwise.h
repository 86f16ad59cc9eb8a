#pragma once
// What an elementwise kernel sees, on CPU and CUDA alike.
//
// Every operand is a [rows, inner] array: elements of a row are contiguous and
// rows are `stride` elements apart. A dense tensor is a single row. The packed
// GLU form is rows of 2*inner elements with the gate half at +0 and the up half
// at +inner, so the same kernels read it without a split or a copy.
//
// An op adapter turns a functor into what the launcher calls per element:
//   op(index, in[NIN], out[NOUT])  with values in the opmath type.
// `index` is the element's position in [0, rows*inner), for ops whose
// parameters depend on it (per-channel prelu weight, per-feature swish beta,
// random draws keyed by element).
#include <cstdint>

#include "fastact/macros.h"

namespace fastact {

template <class scalar_t, int NIN, int NOUT>
struct ElementwiseArgs {
  static constexpr int kIn = NIN;
  static constexpr int kOut = NOUT;
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

// y = f(gate) * up; inputs (gate, up)
template <class F>
struct GatedFwd {
  static constexpr int kIn = 2, kOut = 1;
  F f;
  template <class T> FA_HD void operator()(int64_t, const T* in, T* out) const {
    out[0] = f.fwd(in[0]) * in[1];
  }
};

// d_gate = f'(gate) * dy * up, d_up = f(gate) * dy; inputs (dy, gate, up)
template <class F>
struct GatedBwd {
  static constexpr int kIn = 3, kOut = 2;
  F f;
  template <class T> FA_HD void operator()(int64_t, const T* in, T* out) const {
    out[0] = f.bwd(in[1], in[0] * in[2]);
    out[1] = f.fwd(in[1]) * in[0];
  }
};

}  // namespace fastact
