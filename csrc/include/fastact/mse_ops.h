#pragma once
// mse_loss on the shared launcher. reduction='none': (x - t)^2 forward, and
// both gradients 2 g (x - t), -2 g (x - t) in one backward pass. 'mean' and
// 'sum': the sum of (x - t)^2 is one fused reduction (cpu/mse.cpp,
// cuda/mse.cu; nothing of the input's size is written), and its backward is
// 2 s (x - t) with the scalar s read from the device (no host sync).
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

// input (x, t); output dx = 2 s (x - t), s a scalar on the device
template <class A>
struct ScaledDiffBwd {
  static constexpr int kIn = 2, kOut = 1;
  const A* scale;
  template <class T> FA_HD void operator()(int64_t, const T* in, T* out) const {
    out[0] = T(2) * static_cast<T>(*scale) * (in[0] - in[1]);
  }
};

// The checks and layouts of every mse op: (x dense, t in x's layout).
inline std::tuple<at::Tensor, at::Tensor> mse_operands(const at::Tensor& input, const at::Tensor& target) {
  constexpr const char* op = "fastact.mse_loss";
  check_float(input, op);
  check_like(target, input, op, "target", "input");
  at::Tensor x = dense(input);
  return {x, same_layout(target, x)};
}

template <class L>
struct MseOps {
  static constexpr const char* kName = "fastact.mse_loss";

  static at::Tensor squared_difference(const at::Tensor& input, const at::Tensor& target) {
    const c10::OptionalDeviceGuard guard(input.device());
    auto [x, t] = mse_operands(input, target);
    at::Tensor out = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), kName, [&] {
      L::run(SquaredDiffFwd{}, flat_args<scalar_t, 2, 1>({&x, &t}, {&out}));
    });
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> squared_difference_backward(const at::Tensor& grad,
                                                                        const at::Tensor& input,
                                                                        const at::Tensor& target) {
    const c10::OptionalDeviceGuard guard(input.device());
    auto [x, t] = mse_operands(input, target);
    check_like(grad, input, kName, "grad_output", "input");
    at::Tensor g = same_layout(grad, x);
    at::Tensor dx = new_like(x);
    at::Tensor dt = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), kName, [&] {
      L::run(SquaredDiffBwd{}, flat_args<scalar_t, 3, 2>({&g, &x, &t}, {&dx, &dt}));
    });
    return {dx, dt};
  }

  static at::Tensor squared_difference_sum_backward(const at::Tensor& grad, const at::Tensor& input,
                                                    const at::Tensor& target) {
    const c10::OptionalDeviceGuard guard(input.device());
    auto [x, t] = mse_operands(input, target);
    const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK_VALUE(grad.numel() == 1, kName, ": the sum's gradient must be one value, got ", grad.sizes());
    TORCH_CHECK(grad.device() == x.device(), kName, ": grad is on ", grad.device(), " but input is on ",
                x.device());
    const at::Tensor s = grad.to(acc).reshape({});
    at::Tensor dx = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), kName, [&] {
      using A = at::opmath_type<scalar_t>;
      L::run(ScaledDiffBwd<A>{s.const_data_ptr<A>()}, flat_args<scalar_t, 2, 1>({&x, &t}, {&dx}));
    });
    return dx;
  }
};

#define FA_REGISTER_MSE_OPS(L)                                          \
  m.impl("squared_difference", &::fastact::MseOps<L>::squared_difference); \
  m.impl("squared_difference_backward", &::fastact::MseOps<L>::squared_difference_backward); \
  m.impl("squared_difference_sum_backward", &::fastact::MseOps<L>::squared_difference_sum_backward);

}  // namespace fastact
