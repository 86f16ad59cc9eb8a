#pragma once
// mse_loss's elementwise part on the shared launcher: (x - t)^2 forward, and
// both gradients 2 g (x - t), -2 g (x - t) in one backward pass. The
// reduction (mean or sum) is a torch op on the result, as in torch.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>

#include <tuple>

#include "fastact/alloc.h"
#include "fastact/activation_ops.h"
#include "fastact/checks.h"
#include "fastact/dispatch.h"
#include "fastact/elementwise.h"

namespace fastact {

struct SquaredDiffFwd {
  static constexpr int kIn = 2, kOut = 1;
  template <class T> FA_HD void operator()(int64_t, const T* in, T* out) const {
    const T d = in[0] - in[1];
    out[0] = d * d;
  }
};

// inputs (g, x, t); outputs (dx, dt)
struct SquaredDiffBwd {
  static constexpr int kIn = 3, kOut = 2;
  template <class T> FA_HD void operator()(int64_t, const T* in, T* out) const {
    const T d = T(2) * in[0] * (in[1] - in[2]);
    out[0] = d;
    out[1] = -d;
  }
};

template <class L>
struct MseOps {
  static constexpr const char* kName = "fastact.mse_loss";

  static at::Tensor squared_difference(const at::Tensor& input, const at::Tensor& target) {
    check_float(input, kName);
    check_like(target, input, kName, "target", "input");
    const c10::OptionalDeviceGuard guard(input.device());
    at::Tensor x = dense(input);
    at::Tensor t = same_layout(target, x);
    at::Tensor out = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), kName, [&] {
      L::run(SquaredDiffFwd{}, flat_args<scalar_t, 2, 1>({&x, &t}, {&out}));
    });
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> squared_difference_backward(const at::Tensor& grad,
                                                                        const at::Tensor& input,
                                                                        const at::Tensor& target) {
    check_float(input, kName);
    check_like(target, input, kName, "target", "input");
    check_like(grad, input, kName, "grad_output", "input");
    const c10::OptionalDeviceGuard guard(input.device());
    at::Tensor x = dense(input);
    at::Tensor t = same_layout(target, x);
    at::Tensor g = same_layout(grad, x);
    at::Tensor dx = new_like(x);
    at::Tensor dt = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), kName, [&] {
      L::run(SquaredDiffBwd{}, flat_args<scalar_t, 3, 2>({&g, &x, &t}, {&dx, &dt}));
    });
    return {dx, dt};
  }
};

#define FA_REGISTER_MSE_OPS(L)                                          \
  m.impl("squared_difference", &::fastact::MseOps<L>::squared_difference); \
  m.impl("squared_difference_backward", &::fastact::MseOps<L>::squared_difference_backward);

}  // namespace fastact
