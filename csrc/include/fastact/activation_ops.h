#pragma once
// Host side of the activation ops, shared by the CPU and CUDA registrations:
// argument checks, layout handling and output allocation, then one call to
// the device's elementwise launcher `L` (CpuLauncher or CudaLauncher) with the
// op adapter around the functor.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>

#include "fastact/alloc.h"
#include "fastact/checks.h"
#include "fastact/dispatch.h"
#include "fastact/elementwise.h"
#include "fastact/ops.h"

namespace fastact {

// The op's user-facing name, for error messages.
template <class F> struct OpName;
#define FA_DEFINE_OP_NAME(name, F, ARGS, SCHEMA) \
  template <> struct OpName<F> { static constexpr const char* value = "fastact." #name; };
FASTACT_ACTIVATIONS(FA_DEFINE_OP_NAME)
#undef FA_DEFINE_OP_NAME

// Arguments for a kernel over dense tensors of one layout, seen as one row.
template <class scalar_t, int NIN, int NOUT>
ElementwiseArgs<scalar_t, NIN, NOUT> flat_args(const at::Tensor* const (&in)[NIN],
                                               const at::Tensor* const (&out)[NOUT]) {
  ElementwiseArgs<scalar_t, NIN, NOUT> a{};
  a.rows = 1;
  a.inner = out[0]->numel();
  for (int k = 0; k < NIN; ++k) {
    a.in[k] = in[k]->template const_data_ptr<scalar_t>();
    a.in_stride[k] = a.inner;
  }
  for (int k = 0; k < NOUT; ++k) {
    a.out[k] = out[k]->template mutable_data_ptr<scalar_t>();
    a.out_stride[k] = a.inner;
  }
  return a;
}

template <class L, class F>
struct ActivationOps {
  static constexpr const char* kName = OpName<F>::value;

  static void run_forward(const F& f, const at::Tensor& x, const at::Tensor& out) {
    FA_DISPATCH_FLOATING(x.scalar_type(), kName, [&] {
      L::run(UnaryFwd<F>{f}, flat_args<scalar_t, 1, 1>({&x}, {&out}));
    });
  }

  template <class... A>
  static at::Tensor forward(const at::Tensor& self, A... args) {
    F f(args...);
    check_float(self, kName);
    const c10::OptionalDeviceGuard guard(self.device());
    at::Tensor x = dense(self);
    at::Tensor out = new_like(x);
    run_forward(f, x, out);
    return out;
  }

  template <class... A>
  static void forward_(const at::Tensor& self, A... args) {
    F f(args...);
    check_float(self, kName);
    const c10::OptionalDeviceGuard guard(self.device());
    if (self.is_non_overlapping_and_dense()) {
      run_forward(f, self, self);
    } else {
      at::Tensor x = dense(self);
      run_forward(f, x, x);
      self.copy_(x);
    }
  }

  template <class... A>
  static at::Tensor backward(const at::Tensor& grad_output, const at::Tensor& self, A... args) {
    F f(args...);
    check_float(self, kName, "self");
    check_like(grad_output, self, kName, "grad_output", "self");
    const c10::OptionalDeviceGuard guard(self.device());
    at::Tensor x = dense(self);
    at::Tensor dy = same_layout(grad_output, x);
    at::Tensor dx = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), kName, [&] {
      L::run(UnaryBwd<F>{f}, flat_args<scalar_t, 2, 1>({&dy, &x}, {&dx}));
    });
    return dx;
  }
};

// Registers the three kernels of every activation of `LIST` for launcher `L`.
#define FA_REGISTER_ACTIVATION(name, F, ARGS, SCHEMA)                                          \
  m.impl(#name, &::fastact::ActivationOps<FA_LAUNCHER, ::fastact::F>::forward<FA_STRIP ARGS>); \
  m.impl(#name "_", &::fastact::ActivationOps<FA_LAUNCHER, ::fastact::F>::forward_<FA_STRIP ARGS>); \
  m.impl(#name "_backward",                                                                    \
         &::fastact::ActivationOps<FA_LAUNCHER, ::fastact::F>::backward<FA_STRIP ARGS>);

}  // namespace fastact
