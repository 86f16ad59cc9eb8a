#pragma once
// Activations whose parameter varies with the element: prelu (one slope per
// channel, dim 1), swish with a tensor beta (one per last-dim feature, or one
// for all) and rrelu in training (a random slope per element from Philox,
// from the [seed, offset] stream of the input's device, as dropout).
// They use the same launcher and functors as the other activations; the op
// adapter computes the parameter from the element's index, so the input is
// made contiguous (row-major) first.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <tuple>

#include "fastact/alloc.h"
#include "fastact/activation_ops.h"
#include "fastact/activations.h"
#include "fastact/checks.h"
#include "fastact/dispatch.h"
#include "fastact/divider.h"
#include "fastact/elementwise.h"
#include "fastact/philox.h"

namespace fastact {

// The value of a small parameter tensor that applies to element i: one value
// for all (count == 1) or one per `count` consecutive groups of `inner`.
// The channel (i / inner) % count takes two divisions per element; below
// 2^31 elements (every realistic layer) they are multiply-shift dividers
// (divider.h), past it 64-bit divisions.
template <class T>
struct ParamOf {
  const T* values;
  int64_t count, inner;
  bool narrow;  // every index and size below 2^31
  Divider32 by_inner, by_count;
  FA_HD T at(int64_t i) const {
    if (count == 1) return values[0];
    if (narrow) {
      const uint32_t group = by_inner.div(static_cast<uint32_t>(i));
      return values[by_count.mod(group)];
    }
    return values[(i / inner) % count];
  }
};

// The parameter `values` (count of them) over the `numel` elements of the operand.
template <class T>
ParamOf<T> param_of(const at::Tensor& values, int64_t inner, int64_t numel) {
  constexpr int64_t kLimit = int64_t{1} << 31;
  const int64_t count = values.numel();
  const bool narrow = numel < kLimit && inner < kLimit && count < kLimit;
  // (an empty operand may have inner or count 0: no element is ever looked up)
  return ParamOf<T>{values.const_data_ptr<T>(), count, inner, narrow,
                    narrow ? Divider32(static_cast<uint32_t>(std::max<int64_t>(inner, 1))) : Divider32(),
                    narrow ? Divider32(static_cast<uint32_t>(std::max<int64_t>(count, 1))) : Divider32()};
}

template <class T>
struct PReluFwd {
  static constexpr int kIn = 1, kOut = 1;
  ParamOf<T> w;
  template <class U> FA_HD void operator()(int64_t i, const U* in, U* out) const {
    out[0] = LeakyRelu::fwd_with(in[0], U(w.at(i)));
  }
};
// Outputs dx and the element's share of d(weight), summed per channel afterwards.
template <class T>
struct PReluBwd {
  static constexpr int kIn = 2, kOut = 2;
  ParamOf<T> w;
  template <class U> FA_HD void operator()(int64_t i, const U* in, U* out) const {
    out[0] = LeakyRelu::bwd_with(in[1], in[0], U(w.at(i)));
    out[1] = in[1] > U(0) ? U(0) : in[1] * in[0];
  }
};

template <class T>
struct SwishBetaFwd {
  static constexpr int kIn = 1, kOut = 1;
  ParamOf<T> beta;
  template <class U> FA_HD void operator()(int64_t i, const U* in, U* out) const {
    out[0] = Swish::fwd_with(in[0], U(beta.at(i)));
  }
};
// Outputs dx and the element's share of d(beta), summed per feature afterwards.
template <class T>
struct SwishBetaBwd {
  static constexpr int kIn = 2, kOut = 2;
  ParamOf<T> beta;
  template <class U> FA_HD void operator()(int64_t i, const U* in, U* out) const {
    const U b = U(beta.at(i));
    out[0] = Swish::bwd_with(in[1], in[0], b);
    out[1] = Swish::dbeta_with(in[1], in[0], b);
  }
};

// rrelu's slope of the element with Philox draw u: lower + (upper - lower) * u.
// The product of two floats is exact in double and the sum rounds once, so
// contracting it into an FMA (which the CUDA and CPU compilers may or may
// not do) changes nothing: the slopes are bitwise the same on CPU and CUDA
// for the same stream, like dropout's masks.
struct RandomSlope {
  const int64_t* rng;  // [seed, offset], host or device memory like the data
  float lower, span;   // span = upper - lower, rounded to float once on the host
  FA_HD uint64_t rng_seed() const { return static_cast<uint64_t>(rng[0]); }
  FA_HD uint64_t rng_offset() const { return static_cast<uint64_t>(rng[1]); }
  FA_HD float slope(float u) const {
    return static_cast<float>(static_cast<double>(lower) + static_cast<double>(span) * static_cast<double>(u));
  }
};
// rrelu draws (kRandom) one uniform per element, as dropout does: the
// launchers make one Philox call per four elements.
struct RandomSlopeOp {
  static constexpr bool kRandom = true;
  RandomSlope r;
  FA_HD uint64_t rng_seed() const { return r.rng_seed(); }
  FA_HD uint64_t rng_offset() const { return r.rng_offset(); }
};
struct RReluFwd : RandomSlopeOp {
  static constexpr int kIn = 1, kOut = 1;
  template <class U> FA_HD void operator()(int64_t, float u, const U* in, U* out) const {
    out[0] = LeakyRelu::fwd_with(in[0], U(r.slope(u)));
  }
};
struct RReluBwd : RandomSlopeOp {
  static constexpr int kIn = 2, kOut = 1;
  template <class U> FA_HD void operator()(int64_t, float u, const U* in, U* out) const {
    out[0] = LeakyRelu::bwd_with(in[1], in[0], U(r.slope(u)));
  }
};

// prelu's weight as one value or one per channel (dim 1 of input), in opmath.
inline at::Tensor prelu_weight(const at::Tensor& input, const at::Tensor& weight,
                               at::ScalarType opmath) {
  constexpr const char* op = "fastact.prelu";
  check_float(weight, op, "weight");
  TORCH_CHECK(weight.device() == input.device(), op, ": weight is on ", weight.device(),
              " but input is on ", input.device());
  TORCH_CHECK_VALUE(weight.dim() <= 1, op, ": weight must be a scalar or 1-D tensor, got ",
                    weight.dim(), "-D");
  const int64_t n = weight.numel();
  if (n != 1) {
    const int64_t channels = input.dim() >= 2 ? input.size(1) : 1;
    TORCH_CHECK_VALUE(n == channels, op, ": weight has ", n,
                      " values but input has ", channels, " channels (dim 1)");
  }
  return weight.to(opmath).contiguous();
}

inline int64_t prelu_inner(const at::Tensor& x, int64_t channels) {
  if (channels == 1) return 1;
  int64_t inner = 1;
  for (int64_t d = 2; d < x.dim(); ++d) inner *= x.size(d);
  return inner;
}

inline at::Tensor swish_beta_values(const at::Tensor& input, const at::Tensor& beta,
                                    at::ScalarType opmath) {
  constexpr const char* op = "fastact.swish";
  check_float(beta, op, "beta");
  TORCH_CHECK(beta.device() == input.device() || beta.dim() == 0, op, ": beta is on ",
              beta.device(), " but input is on ", input.device());
  const int64_t features = input.dim() >= 1 ? input.size(-1) : 1;
  TORCH_CHECK_VALUE(beta.numel() == 1 || (beta.dim() >= 1 && beta.size(-1) == features &&
                                          beta.numel() == features),
                    op, ": beta must hold one value or one per feature (", features,
                    ", the last dim of input), got shape ", beta.sizes());
  return beta.to(input.device(), opmath).contiguous().view({-1});
}

inline RandomSlope rrelu_slope(const at::Tensor& input, double lower, double upper,
                               const at::Tensor& seed) {
  constexpr const char* op = "fastact.rrelu";
  TORCH_CHECK_VALUE(lower <= upper, op, ": lower bound (", lower,
                    ") must not exceed upper bound (", upper, ")");
  const float lo = static_cast<float>(lower), hi = static_cast<float>(upper);
  return RandomSlope{philox_seed_ptr(input, seed, op), lo, hi - lo};
}

template <class L>
struct IndexedOps {
  static at::Tensor prelu(const at::Tensor& self, const at::Tensor& weight) {
    check_float(self, "fastact.prelu");
    const c10::OptionalDeviceGuard guard(self.device());
    at::Tensor x = self.contiguous();
    at::Tensor out = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.prelu", [&] {
      using T = at::opmath_type<scalar_t>;
      at::Tensor w = prelu_weight(x, weight, c10::CppTypeToScalarType<T>::value);
      const ParamOf<T> p = param_of<T>(w, prelu_inner(x, w.numel()), x.numel());
      L::run(PReluFwd<T>{p}, flat_args<scalar_t, 1, 1>({&x}, {&out}));
    });
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> prelu_backward(const at::Tensor& grad_output,
                                                           const at::Tensor& self,
                                                           const at::Tensor& weight) {
    check_float(self, "fastact.prelu", "self");
    check_like(grad_output, self, "fastact.prelu", "grad_output", "self");
    const c10::OptionalDeviceGuard guard(self.device());
    at::Tensor x = self.contiguous();
    at::Tensor dy = grad_output.contiguous();
    at::Tensor dx = new_like(x);
    at::Tensor dw;
    FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.prelu", [&] {
      using T = at::opmath_type<scalar_t>;
      const auto opmath = c10::CppTypeToScalarType<T>::value;
      at::Tensor w = prelu_weight(x, weight, opmath);
      const ParamOf<T> p = param_of<T>(w, prelu_inner(x, w.numel()), x.numel());
      at::Tensor share = new_like(x);
      L::run(PReluBwd<T>{p}, flat_args<scalar_t, 2, 2>({&dy, &x}, {&dx, &share}));
      // The weight's gradient sums the shares over all but the channel dim.
      if (w.numel() == 1) {
        dw = share.sum(opmath);
      } else {
        // (an explicit IntArrayRef: torch 2.11's sum overloads make a braced list ambiguous)
        const int64_t reduced_dims[] = {0, 2};
        dw = share.view({x.size(0), x.size(1), p.inner}).sum(at::IntArrayRef(reduced_dims), false, opmath);
      }
      dw = dw.view(weight.sizes()).to(weight.scalar_type());
    });
    return {dx, dw};
  }

  static at::Tensor swish_beta(const at::Tensor& self, const at::Tensor& beta) {
    check_float(self, "fastact.swish");
    const c10::OptionalDeviceGuard guard(self.device());
    at::Tensor x = self.contiguous();
    at::Tensor out = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.swish", [&] {
      using T = at::opmath_type<scalar_t>;
      at::Tensor b = swish_beta_values(x, beta, c10::CppTypeToScalarType<T>::value);
      const ParamOf<T> p = param_of<T>(b, 1, x.numel());
      L::run(SwishBetaFwd<T>{p}, flat_args<scalar_t, 1, 1>({&x}, {&out}));
    });
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> swish_beta_backward(const at::Tensor& grad_output,
                                                                const at::Tensor& self,
                                                                const at::Tensor& beta) {
    check_float(self, "fastact.swish", "self");
    check_like(grad_output, self, "fastact.swish", "grad_output", "self");
    const c10::OptionalDeviceGuard guard(self.device());
    at::Tensor x = self.contiguous();
    at::Tensor dy = grad_output.contiguous();
    at::Tensor dx = new_like(x);
    at::Tensor dbeta;
    FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.swish", [&] {
      using T = at::opmath_type<scalar_t>;
      at::Tensor b = swish_beta_values(x, beta, c10::CppTypeToScalarType<T>::value);
      const ParamOf<T> p = param_of<T>(b, 1, x.numel());
      // The per-element share of d(beta) is kept in scalar_t; the sum runs in opmath.
      at::Tensor share = new_like(x);
      L::run(SwishBetaBwd<T>{p}, flat_args<scalar_t, 2, 2>({&dy, &x}, {&dx, &share}));
      const int64_t features = b.numel() == 1 ? 1 : x.size(-1);
      const int64_t reduced_dim[] = {0};
      dbeta = share.view({-1, features}).sum(at::IntArrayRef(reduced_dim), false, c10::CppTypeToScalarType<T>::value);
      if (b.numel() == 1) dbeta = dbeta.sum();
      dbeta = dbeta.view(beta.sizes()).to(beta.scalar_type());
    });
    return {dx, dbeta};
  }

  static at::Tensor rrelu_train(const at::Tensor& self, double lower, double upper,
                                const at::Tensor& seed) {
    check_float(self, "fastact.rrelu");
    const RandomSlope r = rrelu_slope(self, lower, upper, seed);
    const c10::OptionalDeviceGuard guard(self.device());
    at::Tensor x = dense(self);
    at::Tensor out = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.rrelu", [&] {
      L::run(RReluFwd{{r}}, flat_args<scalar_t, 1, 1>({&x}, {&out}));
    });
    return out;
  }

  static at::Tensor rrelu_train_backward(const at::Tensor& grad_output, const at::Tensor& self,
                                         double lower, double upper, const at::Tensor& seed) {
    check_float(self, "fastact.rrelu", "self");
    check_like(grad_output, self, "fastact.rrelu", "grad_output", "self");
    const RandomSlope r = rrelu_slope(self, lower, upper, seed);
    const c10::OptionalDeviceGuard guard(self.device());
    at::Tensor x = dense(self);
    at::Tensor dy = same_layout(grad_output, x);
    at::Tensor dx = new_like(x);
    FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.rrelu", [&] {
      L::run(RReluBwd{{r}}, flat_args<scalar_t, 2, 1>({&dy, &x}, {&dx}));
    });
    return dx;
  }
};

#define FA_REGISTER_INDEXED_OPS(L)                                             \
  m.impl("prelu", &::fastact::IndexedOps<L>::prelu);                           \
  m.impl("prelu_backward", &::fastact::IndexedOps<L>::prelu_backward);         \
  m.impl("swish_beta", &::fastact::IndexedOps<L>::swish_beta);                 \
  m.impl("swish_beta_backward", &::fastact::IndexedOps<L>::swish_beta_backward); \
  m.impl("rrelu_train", &::fastact::IndexedOps<L>::rrelu_train);               \
  m.impl("rrelu_train_backward", &::fastact::IndexedOps<L>::rrelu_train_backward);

}  // namespace fastact
