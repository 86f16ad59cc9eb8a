// CPU kernels of the log-probability rows (see logprob_ops.h): rows in
// parallel, each in one online pass over blocks of the row. A block (2-4 KiB,
// in L1) is read for its max, the running sums move to it, then its sums are
// added: memory sees the logits once, and the loops vectorize (max, then
// exp_nonpositive sums).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "fastact/alloc.h"
#include "fastact/cross_entropy_ops.h"
#include "fastact/logprob_ops.h"

namespace fastact {
namespace {

constexpr const char* kForward = "fastact.logprob_rows";
constexpr const char* kBackward = "fastact.logprob_rows_backward";

int64_t checked_target(const int64_t* target, int64_t row, const LogprobParams& p, const char* op) {
  const int64_t t = target[row];
  TORCH_CHECK_INDEX(t == p.ignore_index || (t >= 0 && t < p.classes), op, ": target ", t,
                    " is out of bounds for ", p.classes, " classes (row ", row, ")");
  return t;
}

// The row's (m, s, u) in one pass (s and u accumulated in float64 over
// blocks summed in A: a 150 k-class row summed lane by lane in float drifts).
template <bool kEntropy, class A>
FA_CPU_CLONES LogprobRow<A> row_forward(const A* x, int64_t t, const LogprobParams& p) {
  const int64_t C = p.classes;
  const A T = static_cast<A>(p.temperature);
  A m = -INFINITY;
  double s = 0.0, u = 0.0;
  constexpr int64_t kBlock = 512;
  constexpr int kLanes = 16;
  for (int64_t b = 0; b < C; b += kBlock) {
    const int64_t e = std::min(C, b + kBlock);
    // the max skips NaN (comparisons with NaN are false); a NaN logit still
    // makes the sums, and so the row's outputs, NaN
    A mb = m;
#pragma omp simd reduction(max : mb)
    for (int64_t c = b; c < e; ++c) {
      const A z = x[c] / T;
      mb = z > mb ? z : mb;
    }
    if (mb > m) {
      if (m != -INFINITY) {
        const double d = static_cast<double>(m) - static_cast<double>(mb);  // NaN for m = mb = +inf
        const double r = std::exp(d);
        u = r * (u + d * s);
        s *= r;
      }
      m = mb;
    }
    // relative to 0 while the max is -inf: -inf terms give 0, NaN gives NaN
    const A mm = m == -INFINITY ? A(0) : m;
    // kLanes partial sums by column position (vertical SIMD adds), added
    // in a fixed order: a reduction the compiler vectorized itself would
    // peel to the row's address alignment, and a row's result would depend
    // on where the chunk puts it
    A ls[kLanes] = {}, lu[kLanes] = {};
    auto add = [&](int64_t c, int j) {
      const A d = x[c] / T - mm;
      const A ex = ::fastact::math::exp_nonpositive(d);
      ls[j] += ex;
      if constexpr (kEntropy) lu[j] += xexp(ex, d);
    };
    int64_t c = b;
    for (; c + kLanes <= e; c += kLanes) {
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) add(c + j, j);
    }
    for (int j = 0; c + j < e; ++j) add(c + j, j);
    A bs = 0, bu = 0;
    for (int j = 0; j < kLanes; ++j) {
      bs += ls[j];
      bu += lu[j];
    }
    s += bs;
    u += bu;
  }
  const bool counted = t != p.ignore_index;
  return logprob_finish<A>(m, s, u, counted ? x[t] / T : A(0), counted);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> logprob_rows_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                                double temperature, int64_t ignore_index,
                                                                bool entropy) {
  const LogprobArgs a = logprob_args(logits, target, temperature, ignore_index, entropy, kForward);
  const LogprobParams& p = a.p;
  const auto opts = a.logits.options();
  at::Tensor lse = at::empty({p.rows}, opts.dtype(at::kDouble));
  at::Tensor logp = at::empty({p.rows}, opts);
  at::Tensor ent = at::empty({p.entropy ? p.rows : 0}, opts);
  AT_DISPATCH_FLOATING_TYPES(a.logits.scalar_type(), kForward, [&] {
    using A = scalar_t;
    const A* x = a.logits.const_data_ptr<A>();
    const int64_t* tgt = a.target.const_data_ptr<int64_t>();
    double* lse_out = lse.mutable_data_ptr<double>();
    A* logp_out = logp.mutable_data_ptr<A>();
    A* ent_out = p.entropy ? ent.mutable_data_ptr<A>() : nullptr;
    const int64_t C = p.classes;
    at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t t = checked_target(tgt, r, p, kForward);
        const LogprobRow<A> row = p.entropy ? row_forward<true>(x + r * C, t, p) : row_forward<false>(x + r * C, t, p);
        lse_out[r] = row.lse;
        logp_out[r] = row.logp;
        if (ent_out) ent_out[r] = row.entropy;
      }
    });
  });
  return {lse, logp, ent};
}

// d(logits) of one row; dr may alias x (the in-place op): each element is
// read before it is written, and the target's element is computed first.
// log p_c = (z'_c - hi) - lo from the float64 lse (split_lse: exact under a
// shift of the row).
template <bool kEntropy, class A>
FA_CPU_CLONES void row_backward(const A* x, int64_t t, const LogprobGrad<A>& g, double lse, const LogprobParams& p,
                                A* dr) {
  const int64_t C = p.classes;
  const A T = static_cast<A>(p.temperature);
  const LseSplit<A> l = split_lse<A>(lse);
  auto grad_of = [&](int64_t c) {
    const A d = (x[c] / T - l.hi) - l.lo;
    const A e = ::fastact::math::exp_nonpositive(d);
    // without the entropy term, e * a is 0 for e = 0 already
    return (kEntropy ? g.dz(e, d) : e * g.a) / T;
  };
  const A d_t = t != p.ignore_index ? grad_of(t) + g.g_l / T : A(0);
#pragma GCC ivdep
  for (int64_t c = 0; c < C; ++c) dr[c] = grad_of(c);
  if (t != p.ignore_index) dr[t] = d_t;
}

// Writes d(logits) into out ([rows, C], contiguous; may be a.logits itself).
void backward_into(const LogprobArgs& a, const at::Tensor& lse, const std::optional<at::Tensor>& entropy,
                   const std::optional<at::Tensor>& grad_lse, const std::optional<at::Tensor>& grad_logp,
                   const std::optional<at::Tensor>& grad_entropy, const at::Tensor& out) {
  const LogprobParams& p = a.p;
  const auto acc = a.logits.scalar_type();
  // absent gradients are 0 (a row-sized vector: cheap next to the logits)
  auto rows_of = [&](const std::optional<at::Tensor>& t) {
    return t && t->defined() ? t->to(acc).contiguous() : at::zeros({p.rows}, a.logits.options());
  };
  const at::Tensor gs = rows_of(grad_lse), gl = rows_of(grad_logp), gh = rows_of(grad_entropy);
  const bool with_entropy = grad_entropy && grad_entropy->defined();
  const at::Tensor H = with_entropy ? entropy->to(acc).contiguous() : gh;
  const at::Tensor ls = lse.to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(a.logits.scalar_type(), kBackward, [&] {
    using A = scalar_t;
    const A* x = a.logits.const_data_ptr<A>();
    const int64_t* tgt = a.target.const_data_ptr<int64_t>();
    const A *gsp = gs.const_data_ptr<A>(), *glp = gl.const_data_ptr<A>(), *ghp = gh.const_data_ptr<A>();
    const A* hp = H.const_data_ptr<A>();
    const double* lp = ls.const_data_ptr<double>();
    A* dst = out.mutable_data_ptr<A>();
    const int64_t C = p.classes;
    at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t t = checked_target(tgt, r, p, kBackward);
        const A gl = t != p.ignore_index ? glp[r] : A(0);  // (log p = 0 there)
        const LogprobGrad<A> g{gsp[r] - gl, ghp[r], gl, hp[r]};
        if (g.zero()) {
          std::fill(dst + r * C, dst + (r + 1) * C, A(0));
        } else if (with_entropy) {
          row_backward<true>(x + r * C, t, g, lp[r], p, dst + r * C);
        } else {
          row_backward<false>(x + r * C, t, g, lp[r], p, dst + r * C);
        }
      }
    });
  });
}

at::Tensor logprob_rows_backward_cpu(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                                     const std::optional<at::Tensor>& entropy,
                                     const std::optional<at::Tensor>& grad_lse,
                                     const std::optional<at::Tensor>& grad_logp,
                                     const std::optional<at::Tensor>& grad_entropy, double temperature,
                                     int64_t ignore_index) {
  const LogprobArgs a = logprob_args(logits, target, temperature, ignore_index, false, kBackward);
  check_logprob_rows(a, lse, entropy, grad_lse, grad_logp, grad_entropy, kBackward);
  at::Tensor dx = new_like(a.logits);
  backward_into(a, lse, entropy, grad_lse, grad_logp, grad_entropy, dx);
  return dx;
}

void logprob_rows_backward_inplace_cpu(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                                       const std::optional<at::Tensor>& entropy,
                                       const std::optional<at::Tensor>& grad_lse,
                                       const std::optional<at::Tensor>& grad_logp,
                                       const std::optional<at::Tensor>& grad_entropy, double temperature,
                                       int64_t ignore_index) {
  TORCH_CHECK_VALUE(logits.is_contiguous(), "fastact.logprob_rows_backward_: logits must be contiguous to be "
                    "overwritten with their gradient");
  const LogprobArgs a = logprob_args(logits, target, temperature, ignore_index, false, kBackward);
  check_logprob_rows(a, lse, entropy, grad_lse, grad_logp, grad_entropy, kBackward);
  backward_into(a, lse, entropy, grad_lse, grad_logp, grad_entropy, logits);
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, CPU, m) {
  m.impl("logprob_rows", &::fastact::logprob_rows_cpu);
  m.impl("logprob_rows_backward", &::fastact::logprob_rows_backward_cpu);
  m.impl("logprob_rows_backward_", &::fastact::logprob_rows_backward_inplace_cpu);
}
