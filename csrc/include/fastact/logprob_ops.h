#pragma once
// Per-row log-probabilities and entropies of tempered logits (the
// post-training heads' rows, losses/posttrain.py), for the CPU and CUDA
// kernels. Logits [N, V] float32/float64 (the chunk buffer of the linear
// head), z'_c = z_c / T.
//
// Forward, ONE online pass over each row: the running max m, s = sum_c
// exp(z'_c - m) and u = sum_c exp(z'_c - m) (z'_c - m), both rescaled when
// the max grows (m -> m': s' = r s, u' = r (u + (m - m') s), r = exp(m - m')).
// Then
//   lse = m + log s               (float64, as cross_entropy_rows: backward forms z' - lse exactly)
//   log p_t = (z'_t - m) - log s  (0 for a row whose target is ignore_index)
//   H = lse - sum_c p_c z'_c = log s - u / s
// H is a sum of two non-negative terms (u <= 0): no cancellation, and no
// second read of the logits for it.
//
// Backward, with g_l, g_h, g_lse the rows' gradients of log p_t, H and lse,
// log p_c = z'_c - lse and p_c = exp(log p_c):
//   d log p_t / dz_c = ([c == t] - p_c) / T
//   dH / dz_c = -p_c (z'_c - sum_k p_k z'_k) / T = -p_c (log p_c + H) / T
//   d lse / dz_c = p_c / T
// so dz_c = (p_c (g_lse - g_l - g_h (log p_c + H)) + [c == t] g_l) / T. A
// row whose target is ignore_index has log p = 0, a constant: its g_l is
// left out (a vocabulary slice that does not hold the target passes -g_l as
// g_lse instead, see losses/posttrain.py). A p_c of 0 contributes 0 (no
// 0 * -inf for a -inf logit); a row whose gradients are all 0 gets a
// gradient of 0 without reading its logits.
#include <cstdint>

#include "fastact/macros.h"
#include "fastact/math.h"

namespace fastact {

struct LogprobParams {
  int64_t rows, classes;
  int64_t ignore_index;
  double temperature;
  bool entropy;
};

// e * d with e = exp(d) (d = z' - m <= 0): 0 where e is 0 (d = -inf, or
// far below the max), so that a -inf logit adds nothing to u.
template <class A>
FA_HD A xexp(A e, A d) {
  return e > A(0) ? e * d : A(0);
}

// The running (m, s, u) triple of one row or of a share of it. -inf values
// add nothing (also before any finite value); NaN makes s and u NaN; a +inf
// value gives NaN, as exp(inf - inf) does in torch's max-then-sum.
template <class A>
struct OnlineEntropy {
  A m = -INFINITY, s = 0, u = 0;

  // Moves the sums to a larger max mx.
  FA_HD void rescale(A mx) {
    if (m != -INFINITY) {  // (else s and u are 0, or NaN from a NaN value: they stay)
      const A d = m - mx;  // NaN for m = mx = +inf: the row's NaN
      const A r = ::fastact::math::exp(d);
      u = r * (u + d * s);
      s *= r;
    }
    m = mx;
  }
  // Adds N values with one rescale (kEntropy: also u).
  template <bool kEntropy, int N>
  FA_HD void add_all(const A (&z)[N]) {
    A mx = m;
    for (int j = 0; j < N; ++j) mx = z[j] > mx ? z[j] : mx;
    if (mx > m) rescale(mx);
    for (int j = 0; j < N; ++j) {
      if (m != -INFINITY || z[j] != z[j]) {
        const A d = z[j] - m;
        const A e = ::fastact::math::exp(d);
        s += e;
        if (kEntropy) u += xexp(e, d);
      }
    }
  }
  FA_HD void merge(const OnlineEntropy& o) {
    OnlineEntropy b = o;
    if (b.m > m) {
      rescale(b.m);
    } else if (m > b.m) {
      b.rescale(m);
    }
    s += b.s;
    u += b.u;
  }
};

// The forward's outputs of one row from its final (m, s, u) and z'_t.
template <class A>
struct LogprobRow {
  double lse;
  A logp, entropy;
};
template <class A>
FA_HD LogprobRow<A> logprob_finish(double m, double s, double u, A z_t, bool counted) {
  LogprobRow<A> r;
  const double log_s = ::log(s);
  r.lse = m == -INFINITY ? m + s : m + log_s;  // a row of -inf: -inf (NaN stays NaN)
  // z'_t - m is exact for the z'_t that matter (close to the max)
  r.logp = counted ? static_cast<A>((static_cast<double>(z_t) - m) - log_s) : A(0);
  r.entropy = static_cast<A>(log_s - u / s);
  return r;
}

// The backward's coefficients of one row:
// dz_c = p_c (a - b (log p_c + H)) + [c == t] g_l, all divided by T.
template <class A>
struct LogprobGrad {
  A a, b, g_l, H;
  FA_HD bool zero() const { return a == A(0) && b == A(0) && g_l == A(0); }
  // dz_c * T for log p_c = d and p_c = e (0 where e is 0, see xexp)
  FA_HD A dz(A e, A d) const { return e > A(0) ? e * (a - b * (d + H)) : A(0); }
};

}  // namespace fastact

#include <ATen/core/Tensor.h>

#include <optional>

#include "fastact/checks.h"

namespace fastact {

// Checks and parameters shared by the CPU and CUDA kernels.
struct LogprobArgs {
  at::Tensor logits, target;  // contiguous
  LogprobParams p;
};

inline LogprobArgs logprob_args(const at::Tensor& logits, const at::Tensor& target, double temperature,
                                int64_t ignore_index, bool entropy, const char* op) {
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble, op,
                   ": logits must be float32 or float64 (the chunk buffer of the head), got ",
                   logits.scalar_type());
  TORCH_CHECK_VALUE(logits.dim() == 2, op, ": expected logits of shape [rows, classes], got ", logits.sizes());
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, op, ": target must be int64, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == logits.size(0), op, ": target must have shape [",
                    logits.size(0), "], got ", target.sizes());
  TORCH_CHECK(target.device() == logits.device(), op, ": target is on ", target.device(), " but logits are on ",
              logits.device());
  TORCH_CHECK_VALUE(temperature > 0 && temperature - temperature == 0, op,
                    ": temperature must be positive and finite, got ", temperature);
  LogprobArgs a;
  a.p.rows = logits.size(0);
  a.p.classes = logits.size(1);
  a.p.ignore_index = ignore_index;
  a.p.temperature = temperature;
  a.p.entropy = entropy;
  a.logits = logits.contiguous();
  a.target = target.contiguous();
  return a;
}

// The backward's per-row inputs: [rows] tensors on the logits' device, in
// the logits' dtype (lse: float64; converted by the caller's .to()).
inline void check_logprob_rows(const LogprobArgs& a, const at::Tensor& lse, const std::optional<at::Tensor>& entropy,
                               const std::optional<at::Tensor>& grad_lse, const std::optional<at::Tensor>& grad_logp,
                               const std::optional<at::Tensor>& grad_entropy, const char* op) {
  auto check = [&](const at::Tensor& t, const char* what) {
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == a.p.rows, op, ": ", what, " must have shape [", a.p.rows,
                      "], got ", t.sizes());
    check_float(t, op, what);
    TORCH_CHECK(t.device() == a.logits.device(), op, ": ", what, " is on ", t.device(), " but logits are on ",
                a.logits.device());
  };
  check(lse, "lse");
  if (grad_lse && grad_lse->defined()) check(*grad_lse, "grad_lse");
  if (grad_logp && grad_logp->defined()) check(*grad_logp, "grad_logp");
  if (grad_entropy && grad_entropy->defined()) {
    check(*grad_entropy, "grad_entropy");
    TORCH_CHECK_VALUE(entropy && entropy->defined(), op, ": grad_entropy needs the rows' entropy");
    check(*entropy, "entropy");
  }
}

}  // namespace fastact
