#pragma once
// Host side of the fused dropout family, shared by the CPU and CUDA
// registrations.
//
// The keep decision of element i is u_i >= p with u_i the Philox draw number
// i of the stream (seed, offset) held in the 2-element int64 tensor `seed`
// (on the input's device; see `_philox_seed`). It is a pure function of
// (seed, offset, i), identical on CPU and CUDA, so nothing of size numel is
// stored: every backward is the same mask applied to the gradient. Kept
// values are scaled by 1/(1-p); as in torch, a dropped element is multiplied
// by 0 (a NaN or inf input stays NaN). Elements are indexed in row-major
// order, so inputs are made contiguous.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>

#include <optional>
#include <type_traits>

#include "fastact/alloc.h"
#include "fastact/activation_ops.h"
#include "fastact/checks.h"
#include "fastact/dispatch.h"
#include "fastact/elementwise.h"
#include "fastact/ops.h"

namespace fastact {

struct KeepMask {
  const int64_t* rng;  // [seed, offset], host or device memory like the data
  float p;
  double scale;  // 1/(1-p), rounded to the opmath type where it is used
  FA_HD uint64_t rng_seed() const { return static_cast<uint64_t>(rng[0]); }
  FA_HD uint64_t rng_offset() const { return static_cast<uint64_t>(rng[1]); }
  // The factor of element with draw u: 1/(1-p) when kept, else 0.
  template <class T> FA_HD T factor(float u) const { return u >= p ? T(scale) : T(0); }
};

// What every dropout op adapter shares: it draws (kRandom) from the stream of m.
struct RandomOp {
  static constexpr bool kRandom = true;
  KeepMask m;
  FA_HD uint64_t rng_seed() const { return m.rng_seed(); }
  FA_HD uint64_t rng_offset() const { return m.rng_offset(); }
};

// y = x * mask * scale; inputs (x). Also the backward of every variant.
struct DropoutOp : RandomOp {
  static constexpr int kIn = 1, kOut = 1;
  template <class T> FA_HD void operator()(int64_t, float u, const T* in, T* out) const {
    out[0] = in[0] * m.factor<T>(u);
  }
};

// The bias is an operand like the others, broadcast over the rows of a
// [rows, features] view by a row stride of 0 (no index arithmetic, vector
// loads on CUDA). An absent bias is a zero vector.

// y = residual + dropout(x + bias); inputs (x, residual, bias)
struct BiasDropoutAddOp : RandomOp {
  static constexpr int kIn = 3, kOut = 1;
  template <class T> FA_HD void operator()(int64_t, float u, const T* in, T* out) const {
    out[0] = in[1] + (in[0] + in[2]) * m.factor<T>(u);
  }
};

// y = dropout(f(x + bias)); inputs (x, bias)
template <class F>
struct BiasActDropoutFwd : RandomOp {
  static constexpr int kIn = 2, kOut = 1;
  F f;
  template <class T> FA_HD void operator()(int64_t, float u, const T* in, T* out) const {
    out[0] = f.fwd(in[0] + in[1]) * m.factor<T>(u);
  }
};

// dx = f'(x + bias) * dropout(dy); inputs (dy, x, bias)
template <class F>
struct BiasActDropoutBwd : RandomOp {
  static constexpr int kIn = 3, kOut = 1;
  F f;
  template <class T> FA_HD void operator()(int64_t, float u, const T* in, T* out) const {
    out[0] = f.bwd(in[1] + in[2], in[0] * m.factor<T>(u));
  }
};

inline KeepMask keep_mask(const at::Tensor& input, double p, const at::Tensor& seed,
                          const char* op) {
  TORCH_CHECK_VALUE(p >= 0 && p <= 1, op, ": dropout probability has to be between 0 and 1, but got ", p);
  return KeepMask{philox_seed_ptr(input, seed, op), static_cast<float>(p),
                  p < 1 ? 1.0 / (1.0 - p) : 0.0};
}

// The bias in the input's dtype, one value per last-dim feature (zeros when
// absent), and the [rows, features] arguments with the bias row repeated.
inline at::Tensor bias_or_zeros(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                const char* op) {
  const int64_t features = x.dim() >= 1 ? x.size(-1) : 1;
  if (!bias.has_value() || !bias->defined()) return at::zeros({features}, x.options());
  check_float(*bias, op, "bias");
  TORCH_CHECK(bias->device() == x.device(), op, ": bias is on ", bias->device(),
              " but input is on ", x.device());
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == features, op,
                    ": bias must be 1-D with one value per last-dim feature (", features,
                    "), got shape ", bias->sizes());
  return bias->to(x.scalar_type()).contiguous();
}

// Operands of one shape as [rows, features] rows, plus the bias (row stride 0) last.
template <class scalar_t, int NIN>
ElementwiseArgs<scalar_t, NIN, 1> rows_with_bias(const at::Tensor* const (&in)[NIN - 1],
                                                 const at::Tensor& bias, const at::Tensor& out) {
  ElementwiseArgs<scalar_t, NIN, 1> a{};
  a.inner = std::max<int64_t>(bias.numel(), 1);
  a.rows = out.numel() / a.inner;
  for (int k = 0; k < NIN - 1; ++k) {
    a.in[k] = in[k]->template const_data_ptr<scalar_t>();
    a.in_stride[k] = a.inner;
  }
  a.in[NIN - 1] = bias.template const_data_ptr<scalar_t>();
  a.in_stride[NIN - 1] = 0;
  a.out[0] = out.template mutable_data_ptr<scalar_t>();
  a.out_stride[0] = a.inner;
  return a;
}

// Calls fn(F()) with the functor of the activation named `name`.
template <class Fn>
void visit_activation(c10::string_view name, const char* op, Fn&& fn) {
  bool found = false;
#define FA_VISIT_ACTIVATION(n, F, ARGS, SCHEMA)                                               \
  if (!found && name == #n) {                                                                 \
    found = true;                                                                             \
    if constexpr (std::is_default_constructible_v<F>) {                                       \
      fn(F());                                                                                \
    } else {                                                                                  \
      TORCH_CHECK_VALUE(false, op, ": activation '", name,                                    \
                        "' needs arguments; use one that takes only the input");             \
    }                                                                                         \
  }
  FASTACT_ACTIVATIONS(FA_VISIT_ACTIVATION)
#undef FA_VISIT_ACTIVATION
  TORCH_CHECK_VALUE(found, op, ": unknown activation '", name, "'");
}

template <class L>
struct DropoutOps {
  static at::Tensor dropout(const at::Tensor& input, double p, const at::Tensor& seed) {
    constexpr const char* op = "fastact.dropout";
    check_float(input, op);
    const KeepMask m = keep_mask(input, p, seed, op);
    const c10::OptionalDeviceGuard guard(input.device());
    at::Tensor x = input.contiguous();
    at::Tensor out = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), op, [&] {
      L::run(DropoutOp{{m}}, flat_args<scalar_t, 1, 1>({&x}, {&out}));
    });
    return out;
  }

  static void dropout_(const at::Tensor& self, double p, const at::Tensor& seed) {
    constexpr const char* op = "fastact.dropout";
    check_float(self, op);
    const KeepMask m = keep_mask(self, p, seed, op);
    const c10::OptionalDeviceGuard guard(self.device());
    at::Tensor x = self.is_contiguous() ? self : self.contiguous();
    FA_DISPATCH_FLOATING(x.scalar_type(), op, [&] {
      L::run(DropoutOp{{m}}, flat_args<scalar_t, 1, 1>({&x}, {&x}));
    });
    if (!self.is_same(x)) self.copy_(x);
  }

  static at::Tensor bias_dropout_add(const at::Tensor& input, const std::optional<at::Tensor>& bias,
                                     const at::Tensor& residual, double p, const at::Tensor& seed) {
    const char* op = bias.has_value() ? "fastact.bias_dropout_add" : "fastact.dropout_add";
    check_float(input, op);
    check_like(residual, input, op, "residual", "input");
    const KeepMask m = keep_mask(input, p, seed, op);
    const c10::OptionalDeviceGuard guard(input.device());
    at::Tensor x = input.contiguous();
    at::Tensor r = residual.contiguous();
    at::Tensor out = new_like(x);
    const at::Tensor b = bias_or_zeros(x, bias, op);
    FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.bias_dropout_add", [&] {
      L::run(BiasDropoutAddOp{{m}}, rows_with_bias<scalar_t, 3>({&x, &r}, b, out));
    });
    return out;
  }

  static at::Tensor dropout_add(const at::Tensor& input, const at::Tensor& residual, double p,
                                const at::Tensor& seed) {
    return bias_dropout_add(input, std::nullopt, residual, p, seed);
  }

  static at::Tensor bias_act_dropout(const at::Tensor& input, const std::optional<at::Tensor>& bias,
                                     c10::string_view activation, double p, const at::Tensor& seed) {
    constexpr const char* op = "fastact.bias_act_dropout";
    check_float(input, op);
    const KeepMask m = keep_mask(input, p, seed, op);
    const c10::OptionalDeviceGuard guard(input.device());
    at::Tensor x = input.contiguous();
    at::Tensor out = new_like(x);
    const at::Tensor b = bias_or_zeros(x, bias, op);
    visit_activation(activation, op, [&](auto f) {
      using F = decltype(f);
      FA_DISPATCH_FLOATING(x.scalar_type(), op, [&] {
        L::run(BiasActDropoutFwd<F>{{m}, f}, rows_with_bias<scalar_t, 2>({&x}, b, out));
      });
    });
    return out;
  }

  static at::Tensor bias_act_dropout_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                              const std::optional<at::Tensor>& bias,
                                              c10::string_view activation, double p,
                                              const at::Tensor& seed) {
    constexpr const char* op = "fastact.bias_act_dropout";
    check_float(input, op, "input");
    check_like(grad_output, input, op, "grad_output", "input");
    const KeepMask m = keep_mask(input, p, seed, op);
    const c10::OptionalDeviceGuard guard(input.device());
    at::Tensor x = input.contiguous();
    at::Tensor dy = grad_output.contiguous();
    at::Tensor dx = new_like(x);
    const at::Tensor b = bias_or_zeros(x, bias, op);
    visit_activation(activation, op, [&](auto f) {
      using F = decltype(f);
      FA_DISPATCH_FLOATING(x.scalar_type(), op, [&] {
        L::run(BiasActDropoutBwd<F>{{m}, f}, rows_with_bias<scalar_t, 3>({&dy, &x}, b, dx));
      });
    });
    return dx;
  }
};

#define FA_REGISTER_DROPOUT_OPS(L)                                                       \
  m.impl("dropout", &::fastact::DropoutOps<L>::dropout);                                 \
  m.impl("dropout_", &::fastact::DropoutOps<L>::dropout_);                               \
  m.impl("dropout_add", &::fastact::DropoutOps<L>::dropout_add);                         \
  m.impl("bias_dropout_add", &::fastact::DropoutOps<L>::bias_dropout_add);               \
  m.impl("bias_act_dropout", &::fastact::DropoutOps<L>::bias_act_dropout);               \
  m.impl("bias_act_dropout_backward", &::fastact::DropoutOps<L>::bias_act_dropout_backward);

}  // namespace fastact
