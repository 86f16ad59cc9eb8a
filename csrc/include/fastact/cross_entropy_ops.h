#pragma once
// Cross-entropy over rows of logits [N, C] (the class dim made last and
// contiguous by the Python layer), for the CPU and CUDA kernels.
//
// Per row, in float32 for float32/16/bfloat16 logits (float64 for float64): z_c = softcap(x_c), an
// online (running max, running sum) log-sum-exp, and the row's loss in torch's
// definition:
//   index target t:  (1-eps) w_t (lse - z_t) + eps/C sum_c w_c (lse - z_c)
//   prob. target y:  sum_c w_c y'_c (lse - z_c),  y' = (1-eps) y + eps/C
// plus z_loss * lse^2, and 0 for an ignored row. w is the class weight (1 if
// absent). Shift invariance: every term is formed relative to the row max m,
// lse - z_c = log s - (z_c - m) with s = sum_c exp(z_c - m), never as the
// difference of two large numbers (a row near -1e4 in float32 would lose the
// ulp of 1e4, ~1e-3). The per-row lse output is float64 for every input dtype
// (m + log s in double), so that backward, which reads only that lse, forms
// z_c - lse exactly too (split_lse). The reductions (mean over the weights of counted rows, sum, none)
// are torch ops on the [N] row losses, so their gradient reaches the backward
// kernel as the per-row `grad` and nothing syncs with the host.
//
// Backward writes d(logits) once: with p = softmax(z) and g the row's grad,
//   dz_c = g * [ (1-eps) w_t (p_c - [c==t]) + eps/C (W p_c - w_c) + 2 zl lse p_c ]
//   (prob.: dz_c = g * [ S p_c - w_c y'_c + 2 zl lse p_c ],  S = sum_k w_k y'_k)
// and dx_c = dz_c * (1 - (z_c/cap)^2) under softcap.
#include <cstdint>

#include "fastact/macros.h"
#include "fastact/math.h"

namespace fastact {

struct CrossEntropyParams {
  int64_t rows, classes;
  int64_t ignore_index;
  double smoothing, z_loss, softcap;  // softcap <= 0: none; rounded to the opmath type where used
  bool has_weight, prob_target;
};

template <class A>
FA_HD A ce_cap(A x, A cap) {
  return cap > A(0) ? cap * ::fastact::math::tanh(x / cap) : x;
}

// The loss of a row with class-probability targets, sum_c w_c y'_c (lse - z_c)
// = wy log_s - wz (wz relative to the row max); a row without target mass
// (no classes at all: log_s = -inf) loses 0, as torch's sum over no terms.
template <class A>
FA_HD A ce_prob_loss(A wy, A wz, A log_s) {
  return (wy == A(0) ? A(0) : wy * log_s) - wz;
}

// z_loss * lse^2, and nothing when z_loss is 0 (lse may be -inf: no 0 * inf).
template <class A>
FA_HD A ce_z_loss(A z_loss, A lse) {
  return z_loss == A(0) ? A(0) : z_loss * lse * lse;
}

// The float64 row lse as hi + lo in the opmath type A; backward computes
// p_c = exp((z_c - hi) - lo): z_c - hi is exact for the z_c that matter
// (close to hi), so p_c is as accurate as for a row near 0. lo = 0 for a
// non-finite lse (its p_c are NaN, 0 or 1 as before).
template <class A>
struct LseSplit {
  A hi, lo;
};
template <class A>
FA_HD LseSplit<A> split_lse(double lse) {
  const A hi = static_cast<A>(lse);
  const bool finite = lse - lse == 0.0;  // false for +-inf and NaN
  return {hi, finite ? static_cast<A>(lse - static_cast<double>(hi)) : A(0)};
}

// Running (max, sum of exp(z - max)) pair, merged one value or one pair at a
// time. -inf values add nothing (also before any finite value: no
// exp(-inf - -inf)); a NaN value makes s NaN, which every merge keeps; a
// +inf value makes it NaN too, as exp(inf - inf) does in torch's max-then-sum.
template <class A>
struct OnlineLse {
  A m = -INFINITY, s = 0;
  FA_HD void add(A z) {
    if (z > m) {
      // z - z: 0, or NaN for z = +inf (the term exp(z - max) of a row whose max is +inf)
      s = s * ::fastact::math::exp(m - z) + (A(1) + (z - z));
      m = z;
    } else if (m != -INFINITY || z != z) {
      s += ::fastact::math::exp(z - m);
    }
  }
  // Adds N values with one rescale: the running max moves to their max
  // first (-inf and NaN values count as in add; a +inf value gives NaN, as
  // the CPU kernels' max-then-sum does).
  template <int N>
  FA_HD void add_all(const A (&z)[N]) {
    A mx = m;
    for (int j = 0; j < N; ++j) mx = z[j] > mx ? z[j] : mx;
    if (mx > m) {
      s *= ::fastact::math::exp(m - mx);
      m = mx;
    }
    for (int j = 0; j < N; ++j)
      if (m != -INFINITY || z[j] != z[j]) s += ::fastact::math::exp(z[j] - m);
  }
  FA_HD void merge(const OnlineLse& o) {
    if (o.m == -INFINITY) {  // o.s is 0, or NaN
      s += o.s;
      return;
    }
    if (m == -INFINITY) {
      s += o.s;
      m = o.m;
      return;
    }
    const A mm = m > o.m ? m : o.m;
    s = s * ::fastact::math::exp(m - mm) + o.s * ::fastact::math::exp(o.m - mm);
    m = mm;
  }
  // NaN in a row gives NaN; a row of -inf gives -inf (as torch's logsumexp).
  FA_HD A value() const { return m == -INFINITY ? m + s : m + ::fastact::math::log(s); }
};

}  // namespace fastact

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/sum.h>
#include <c10/core/DeviceGuard.h>

#include <optional>
#include <tuple>

#include "fastact/checks.h"
#include "fastact/dispatch.h"

namespace fastact {

// Checks, layouts and parameters shared by the CPU and CUDA kernels.
struct CrossEntropyArgs {
  at::Tensor logits, target, weight;  // contiguous; weight [C] or undefined
  CrossEntropyParams p;
};

inline CrossEntropyArgs cross_entropy_args(const at::Tensor& logits, const at::Tensor& target,
                                           const std::optional<at::Tensor>& weight,
                                           int64_t ignore_index, double smoothing, double z_loss,
                                           double softcap) {
  constexpr const char* op = "fastact.cross_entropy";
  check_float(logits, op, "input");
  TORCH_CHECK_VALUE(logits.dim() == 2, op, ": expected logits of shape [rows, classes], got ",
                    logits.sizes());
  TORCH_CHECK(target.device() == logits.device(), op, ": target is on ", target.device(),
              " but input is on ", logits.device());
  TORCH_CHECK_VALUE(smoothing >= 0 && smoothing <= 1, op,
                    ": label_smoothing must be between 0 and 1, got ", smoothing);
  CrossEntropyArgs a;
  a.p.rows = logits.size(0);
  a.p.classes = logits.size(1);
  a.p.prob_target = target.is_floating_point();
  if (a.p.prob_target) {
    TORCH_CHECK_VALUE(target.sizes() == logits.sizes(), op,
                      ": class-probability target must have the input's shape ", logits.sizes(),
                      ", got ", target.sizes());
    TORCH_CHECK_TYPE(target.scalar_type() == logits.scalar_type(), op,
                     ": class-probability target must have the input's dtype ",
                     logits.scalar_type(), ", got ", target.scalar_type());
  } else {
    TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, op,
                     ": class-index target must be int64, got ", target.scalar_type());
    TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == a.p.rows, op,
                      ": class-index target must have shape [", a.p.rows, "], got ", target.sizes());
  }
  a.p.has_weight = weight.has_value() && weight->defined();
  if (a.p.has_weight) {
    check_float(*weight, op, "weight");
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == a.p.classes, op,
                      ": weight must have one value per class (", a.p.classes, "), got shape ",
                      weight->sizes());
    TORCH_CHECK(weight->device() == logits.device(), op, ": weight is on ", weight->device(),
                " but input is on ", logits.device());
    a.weight = weight->contiguous();
  }
  a.p.ignore_index = ignore_index;
  a.p.smoothing = smoothing;
  a.p.z_loss = z_loss;
  a.p.softcap = softcap;
  a.logits = logits.contiguous();
  a.target = target.contiguous();
  return a;
}

// The backward's per-row inputs: one gradient and one log-sum-exp per row.
inline void check_rows_grad(const at::Tensor& grad, const at::Tensor& lse, const CrossEntropyArgs& a) {
  constexpr const char* op = "fastact.cross_entropy_rows_backward";
  const CrossEntropyParams& p = a.p;
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == p.rows, op, ": grad must have shape [", p.rows,
                    "], got ", grad.sizes());
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == p.rows, op, ": lse must have shape [", p.rows,
                    "], got ", lse.sizes());
  check_float(grad, op, "grad");
  check_float(lse, op, "lse");
  TORCH_CHECK(grad.device() == a.logits.device() && lse.device() == a.logits.device(), op,
              ": grad and lse must be on the logits' device ", a.logits.device());
}

// The in-place backward overwrites the logits with their gradient.
inline void check_inplace_logits(const at::Tensor& logits) {
  TORCH_CHECK_VALUE(logits.is_contiguous(), "fastact.cross_entropy_rows_backward_: logits must be "
                    "contiguous to be overwritten with their gradient");
}

// What the row kernels read (a plain struct, passed to CUDA kernels by
// value): logits, target (indices or probabilities), the class weights in the
// opmath type and their sum W (both absent without a weight: W = C).
template <class S, class A = at::opmath_type<S>>
struct CrossEntropyRows {
  const A* w = nullptr;
  const A* W = nullptr;  // on the logits' device: CUDA reads it in the kernel
  const S* x = nullptr;
  const S* y = nullptr;
  const int64_t* tgt = nullptr;
};

// The rows of a CrossEntropyArgs, with the converted weights kept alive.
template <class S, class A = at::opmath_type<S>>
struct CrossEntropyInputs : CrossEntropyRows<S, A> {
  at::Tensor weight, weight_sum;

  explicit CrossEntropyInputs(const CrossEntropyArgs& a) {
    this->x = a.logits.const_data_ptr<S>();
    if (a.p.has_weight) {
      weight = a.weight.to(c10::CppTypeToScalarType<A>::value);
      weight_sum = weight.sum();  // no host sync on CUDA
      this->w = weight.const_data_ptr<A>();
      this->W = weight_sum.const_data_ptr<A>();
    }
    if (a.p.prob_target) {
      this->y = a.target.const_data_ptr<S>();
    } else {
      this->tgt = a.target.const_data_ptr<int64_t>();
    }
  }
  CrossEntropyRows<S, A> rows() const { return *this; }
};

}  // namespace fastact
