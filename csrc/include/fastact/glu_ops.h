#pragma once
// Host side of the GLU family, shared by the CPU and CUDA registrations.
//
// Two-tensor form: gate and up of one shape, seen as flat arrays.
// Packed form: a contiguous input [outer, 2, inner'] split along `dim`: gate
// rows start every 2*inner elements and up rows `inner` after them, so the
// kernels read both halves in place and the backward writes both gradient
// halves straight into one packed tensor (no split, no cat, no extra buffer).
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

// Where the two halves of a packed input lie.
struct PackedSplit {
  int64_t dim, outer, inner;  // inner: elements of one half per outer index
  std::vector<int64_t> out_sizes;
};

inline PackedSplit packed_split(const at::Tensor& x, int64_t dim, const char* op) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": the packed input must have at least one dimension");
  const int64_t nd = x.dim();
  TORCH_CHECK_VALUE(dim >= -nd && dim < nd, op, ": dim ", dim, " is out of range for a ", nd,
                    "-D input");
  if (dim < 0) dim += nd;
  const int64_t size = x.size(dim);
  TORCH_CHECK_VALUE(size % 2 == 0, op, ": the packed input's size along dim ", dim, " (", size,
                    ") must be even (gate and up halves)");
  PackedSplit s{dim, 1, size / 2, x.sizes().vec()};
  for (int64_t d = 0; d < dim; ++d) s.outer *= x.size(d);
  for (int64_t d = dim + 1; d < nd; ++d) s.inner *= x.size(d);
  s.out_sizes[dim] = size / 2;
  return s;
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
  // Gate and up row pointers of a packed [outer, 2, inner] buffer.
  template <class P>
  static void halves(P* base, int64_t inner, P** gate, P** up) {
    *gate = base + (kSwapHalves ? inner : 0);
    *up = base + (kSwapHalves ? 0 : inner);
  }

  template <class... A>
  static at::Tensor packed(const at::Tensor& input, int64_t dim, A... args) {
    F f(args...);
    check_float(input, kName);
    const PackedSplit s = packed_split(input, dim, kName);
    const c10::OptionalDeviceGuard guard(input.device());
    at::Tensor x = input.contiguous();
    at::Tensor out = new_tensor(s.out_sizes, x.options());
    FA_DISPATCH_FLOATING(x.scalar_type(), kName, [&] {
      ElementwiseArgs<scalar_t, 2, 1> a{};
      a.rows = s.outer;
      a.inner = s.inner;
      const scalar_t* gate;
      const scalar_t* up;
      halves(x.const_data_ptr<scalar_t>(), s.inner, &gate, &up);
      a.in[0] = gate;
      a.in[1] = up;
      a.in_stride[0] = a.in_stride[1] = 2 * s.inner;
      a.out[0] = out.mutable_data_ptr<scalar_t>();
      a.out_stride[0] = s.inner;
      L::run(GatedFwd<F>{f}, a);
    });
    return out;
  }

  template <class... A>
  static at::Tensor packed_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                    int64_t dim, A... args) {
    F f(args...);
    check_float(input, kName, "input");
    const PackedSplit s = packed_split(input, dim, kName);
    check_float(grad_output, kName, "grad_output");
    TORCH_CHECK(grad_output.device() == input.device(), kName, ": grad_output is on ",
                grad_output.device(), " but input is on ", input.device());
    TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), kName,
                     ": grad_output has dtype ", grad_output.scalar_type(), " but input has ",
                     input.scalar_type());
    TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(s.out_sizes), kName,
                      ": grad_output has shape ", grad_output.sizes(), " but the output has ",
                      at::IntArrayRef(s.out_sizes));
    const c10::OptionalDeviceGuard guard(input.device());
    at::Tensor x = input.contiguous();
    at::Tensor dy = grad_output.contiguous();
    at::Tensor dx = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), kName, [&] {
      ElementwiseArgs<scalar_t, 3, 2> a{};
      a.rows = s.outer;
      a.inner = s.inner;
      a.in[0] = dy.const_data_ptr<scalar_t>();
      a.in_stride[0] = s.inner;
      const scalar_t* gate;
      const scalar_t* up;
      halves(x.const_data_ptr<scalar_t>(), s.inner, &gate, &up);
      a.in[1] = gate;
      a.in[2] = up;
      a.in_stride[1] = a.in_stride[2] = 2 * s.inner;
      scalar_t* d_gate;
      scalar_t* d_up;
      halves(dx.mutable_data_ptr<scalar_t>(), s.inner, &d_gate, &d_up);
      a.out[0] = d_gate;
      a.out[1] = d_up;
      a.out_stride[0] = a.out_stride[1] = 2 * s.inner;
      L::run(GatedBwd<F>{f}, a);
    });
    return dx;
  }
};

#define FA_REGISTER_GLU(name, F, ARGS, SCHEMA)                                                  \
  m.impl(#name, &::fastact::GluOps<FA_LAUNCHER, ::fastact::F>::forward<FA_STRIP ARGS>);         \
  m.impl(#name "_backward",                                                                     \
         &::fastact::GluOps<FA_LAUNCHER, ::fastact::F>::backward<FA_STRIP ARGS>);               \
  m.impl(#name "_packed", &::fastact::GluOps<FA_LAUNCHER, ::fastact::F>::packed<FA_STRIP ARGS>); \
  m.impl(#name "_packed_backward",                                                              \
         &::fastact::GluOps<FA_LAUNCHER, ::fastact::F>::packed_backward<FA_STRIP ARGS>);

#define FA_REGISTER_GLU_FAMILY                                                                  \
  FASTACT_GLUS(FA_REGISTER_GLU)                                                                 \
  m.impl("glu", &::fastact::GluOps<FA_LAUNCHER, ::fastact::Sigmoid, true>::packed<>);           \
  m.impl("glu_backward", &::fastact::GluOps<FA_LAUNCHER, ::fastact::Sigmoid, true>::packed_backward<>);

}  // namespace fastact
