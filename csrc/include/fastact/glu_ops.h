#pragma once
// Host side of the GLU family, shared by the CPU and CUDA registrations.
//
// Two-tensor form: gate and up of one shape, seen as flat arrays.
// Packed form: a contiguous input whose gate and up parts the kernels read in
// place, as [rows, inner] operands (elementwise.h), and whose gradient the
// backward writes straight into one packed tensor (no split, no cat, no extra
// buffer). Along `dim`, of size 2 * half, with `outer` elements before it and
// `trailing` after it:
//   halves       rows = outer, inner = half * trailing; up rows `inner`
//                after the gate rows, every 2 * inner elements.
//   interleaved  gate at even, up at odd positions of dim. With trailing != 1
//                this is the halves layout again, one row per pair:
//                rows = outer * half, inner = trailing. Along the last dim
//                (trailing == 1) gate and up are paired operands (every
//                other element): rows = outer, inner = half, up at +1.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>

#include <tuple>

#include "fastact/alloc.h"
#include "fastact/activation_ops.h"
#include "fastact/checks.h"
#include "fastact/dispatch.h"
#include "fastact/elementwise.h"
#include "fastact/ops.h"

namespace fastact {

template <class F> struct GluName;
#define FA_DEFINE_GLU_NAME(name, F, ARGS, SCHEMA) \
  template <> struct GluName<F> { static constexpr const char* value = "fastact." #name; };
FASTACT_GLUS(FA_DEFINE_GLU_NAME)
#undef FA_DEFINE_GLU_NAME
// torch's glu: sigmoid gate on the second half.
template <> struct GluName<Sigmoid> { static constexpr const char* value = "fastact.glu"; };

// Where gate and up lie in a packed input (see the top of this file). The
// packed operands' rows are 2 * inner apart, the output's (and the incoming
// gradient's) inner apart.
struct PackedLayout {
  int64_t rows, inner;
  int64_t up_offset;  // elements from a gate row's start to its up row's
  bool paired;        // gate and up take every other element
  std::vector<int64_t> out_sizes;
};

inline PackedLayout packed_layout(const at::Tensor& x, int64_t dim, bool interleaved, const char* op) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": the packed input must have at least one dimension");
  const int64_t nd = x.dim();
  TORCH_CHECK_VALUE(dim >= -nd && dim < nd, op, ": dim ", dim, " is out of range for a ", nd,
                    "-D input");
  if (dim < 0) dim += nd;
  const int64_t size = x.size(dim);
  TORCH_CHECK_VALUE(size % 2 == 0, op, ": the packed input's size along dim ", dim, " (", size,
                    ") must be even (", interleaved ? "gate and up pairs" : "gate and up halves", ")");
  int64_t outer = 1, trailing = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
  for (int64_t d = dim + 1; d < nd; ++d) trailing *= x.size(d);
  const int64_t half = size / 2;
  PackedLayout l{outer, half * trailing, half * trailing, false, x.sizes().vec()};
  if (interleaved && trailing != 1) {  // (trailing == 0: nothing to read)
    l = PackedLayout{outer * half, trailing, trailing, false, x.sizes().vec()};
  } else if (interleaved) {
    l = PackedLayout{outer, half, 1, true, x.sizes().vec()};
  }
  l.out_sizes[dim] = half;
  return l;
}

template <class L, class F, bool kSwapHalves = false>
struct GluOps {
  static constexpr const char* kName = GluName<F>::value;

  // Two-tensor form --------------------------------------------------------
  static void check_pair(const at::Tensor& gate, const at::Tensor& up) {
    check_float(gate, kName, "gate");
    check_like(up, gate, kName, "up", "gate");
  }

  template <class... A>
  static at::Tensor forward(const at::Tensor& gate_in, const at::Tensor& up_in, A... args) {
    F f(args...);
    check_pair(gate_in, up_in);
    const c10::OptionalDeviceGuard guard(gate_in.device());
    at::Tensor gate = dense(gate_in);
    at::Tensor up = same_layout(up_in, gate);
    at::Tensor out = new_like(gate);
    FA_DISPATCH_FLOATING(gate.scalar_type(), kName, [&] {
      L::run(GatedFwd<F>{f}, flat_args<scalar_t, 2, 1>({&gate, &up}, {&out}));
    });
    return out;
  }

  template <class... A>
  static std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_output,
                                                     const at::Tensor& gate_in,
                                                     const at::Tensor& up_in, A... args) {
    F f(args...);
    check_pair(gate_in, up_in);
    check_like(grad_output, gate_in, kName, "grad_output", "gate");
    const c10::OptionalDeviceGuard guard(gate_in.device());
    at::Tensor gate = dense(gate_in);
    at::Tensor up = same_layout(up_in, gate);
    at::Tensor dy = same_layout(grad_output, gate);
    at::Tensor d_gate = new_like(gate);
    at::Tensor d_up = new_like(gate);
    FA_DISPATCH_FLOATING(gate.scalar_type(), kName, [&] {
      L::run(GatedBwd<F>{f}, flat_args<scalar_t, 3, 2>({&dy, &gate, &up}, {&d_gate, &d_up}));
    });
    return {d_gate, d_up};
  }

  // Packed form ------------------------------------------------------------
  // The gate and up operands of a packed buffer at `base`.
  template <class P>
  static void gate_up(P* base, const PackedLayout& l, P** gate, P** up) {
    *gate = base + (kSwapHalves ? l.up_offset : 0);
    *up = base + (kSwapHalves ? 0 : l.up_offset);
  }

  // The kernel over a packed layout: bit k of kPackedIn / kPackedOut marks
  // the operands that lie in the packed buffer, paired in the interleaved
  // layout along the last dim.
  template <unsigned kPackedIn, unsigned kPackedOut, class Op, class S, int NIN, int NOUT>
  static void run_packed(const Op& op, const ElementwiseArgs<S, NIN, NOUT>& a, bool paired) {
    if (paired) {
      ElementwiseArgs<S, NIN, NOUT, kPackedIn, kPackedOut> p;
      for (int k = 0; k < NIN; ++k) p.in[k] = a.in[k], p.in_stride[k] = a.in_stride[k];
      for (int k = 0; k < NOUT; ++k) p.out[k] = a.out[k], p.out_stride[k] = a.out_stride[k];
      p.rows = a.rows;
      p.inner = a.inner;
      L::run(op, p);
    } else {
      L::run(op, a);
    }
  }

  static at::Tensor packed_forward(const at::Tensor& input, int64_t dim, bool interleaved, const F& f) {
    check_float(input, kName);
    const PackedLayout l = packed_layout(input, dim, interleaved, kName);
    const c10::OptionalDeviceGuard guard(input.device());
    at::Tensor x = input.contiguous();
    at::Tensor out = new_tensor(l.out_sizes, x.options());
    FA_DISPATCH_FLOATING(x.scalar_type(), kName, [&] {
      ElementwiseArgs<scalar_t, 2, 1> a{};
      a.rows = l.rows;
      a.inner = l.inner;
      const scalar_t* gate;
      const scalar_t* up;
      gate_up(x.const_data_ptr<scalar_t>(), l, &gate, &up);
      a.in[0] = gate;
      a.in[1] = up;
      a.in_stride[0] = a.in_stride[1] = 2 * l.inner;
      a.out[0] = out.mutable_data_ptr<scalar_t>();
      a.out_stride[0] = l.inner;
      run_packed<0b11u, 0b0u>(GatedFwd<F>{f}, a, l.paired);
    });
    return out;
  }

  static at::Tensor packed_backward_impl(const at::Tensor& grad_output, const at::Tensor& input,
                                         int64_t dim, bool interleaved, const F& f) {
    check_float(input, kName, "input");
    const PackedLayout l = packed_layout(input, dim, interleaved, kName);
    check_float(grad_output, kName, "grad_output");
    TORCH_CHECK(grad_output.device() == input.device(), kName, ": grad_output is on ",
                grad_output.device(), " but input is on ", input.device());
    TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), kName,
                     ": grad_output has dtype ", grad_output.scalar_type(), " but input has ",
                     input.scalar_type());
    TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(l.out_sizes), kName,
                      ": grad_output has shape ", grad_output.sizes(), " but the output has ",
                      at::IntArrayRef(l.out_sizes));
    const c10::OptionalDeviceGuard guard(input.device());
    at::Tensor x = input.contiguous();
    at::Tensor dy = grad_output.contiguous();
    at::Tensor dx = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), kName, [&] {
      ElementwiseArgs<scalar_t, 3, 2> a{};
      a.rows = l.rows;
      a.inner = l.inner;
      a.in[0] = dy.const_data_ptr<scalar_t>();
      a.in_stride[0] = l.inner;
      const scalar_t* gate;
      const scalar_t* up;
      gate_up(x.const_data_ptr<scalar_t>(), l, &gate, &up);
      a.in[1] = gate;
      a.in[2] = up;
      a.in_stride[1] = a.in_stride[2] = 2 * l.inner;
      scalar_t* d_gate;
      scalar_t* d_up;
      gate_up(dx.mutable_data_ptr<scalar_t>(), l, &d_gate, &d_up);
      a.out[0] = d_gate;
      a.out[1] = d_up;
      a.out_stride[0] = a.out_stride[1] = 2 * l.inner;
      run_packed<0b110u, 0b11u>(GatedBwd<F>{f}, a, l.paired);
    });
    return dx;
  }

  // The registered signatures: (input, dim, <the op's arguments A...>,
  // interleaved). A class template, not function templates: a pack before
  // the last parameter is not deduced, and nvcc rejects taking the address
  // of such a function template where g++ accepts it.
  template <class... A>
  struct Packed {
    static at::Tensor forward(const at::Tensor& input, int64_t dim, A... args, bool interleaved) {
      return packed_forward(input, dim, interleaved, F(args...));
    }
    static at::Tensor backward(const at::Tensor& grad_output, const at::Tensor& input, int64_t dim,
                               A... args, bool interleaved) {
      return packed_backward_impl(grad_output, input, dim, interleaved, F(args...));
    }
  };

  // torch's glu(self, dim): halves only, no arguments.
  static at::Tensor halves(const at::Tensor& input, int64_t dim) {
    return packed_forward(input, dim, false, F());
  }
  static at::Tensor halves_backward(const at::Tensor& grad_output, const at::Tensor& input, int64_t dim) {
    return packed_backward_impl(grad_output, input, dim, false, F());
  }
};

#define FA_REGISTER_GLU(name, F, ARGS, SCHEMA)                                                  \
  m.impl(#name, &::fastact::GluOps<FA_LAUNCHER, ::fastact::F>::forward<FA_STRIP ARGS>);         \
  m.impl(#name "_backward",                                                                     \
         &::fastact::GluOps<FA_LAUNCHER, ::fastact::F>::backward<FA_STRIP ARGS>);               \
  m.impl(#name "_packed",                                                                       \
         &::fastact::GluOps<FA_LAUNCHER, ::fastact::F>::Packed<FA_STRIP ARGS>::forward);          \
  m.impl(#name "_packed_backward",                                                              \
         &::fastact::GluOps<FA_LAUNCHER, ::fastact::F>::Packed<FA_STRIP ARGS>::backward);

#define FA_REGISTER_GLU_FAMILY                                                                  \
  FASTACT_GLUS(FA_REGISTER_GLU)                                                                 \
  m.impl("glu", &::fastact::GluOps<FA_LAUNCHER, ::fastact::Sigmoid, true>::halves);             \
  m.impl("glu_backward", &::fastact::GluOps<FA_LAUNCHER, ::fastact::Sigmoid, true>::halves_backward);

}  // namespace fastact
