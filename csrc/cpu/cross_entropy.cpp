// CPU kernels of the cross-entropy rows (see cross_entropy_ops.h): rows in
// parallel, each in two vectorizable passes (max, then the sums).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <cmath>

#include "cpu/half_convert.h"
#include "fastact/alloc.h"
#include "fastact/cross_entropy_ops.h"

namespace fastact {
namespace {

// Everything relative to the row max m (shift invariance: a row of logits
// near -1e4 must give the loss of the same row near 0, and lse - z_t formed
// on large numbers loses the ulp of 1e4):
template <class A>
struct RowSums {
  double lse;           // m + log s, in float64 (what backward reads)
  A log_s;              // log sum_c exp(z_c - m)
  A z_t, w_t, wz;       // z_t - m; wz: sum_c w_c (z_c - m) (smoothing) or sum_c w_c y'_c (z_c - m) (prob.)
  A wy;                 // prob. targets: S = sum_c w_c y'_c
};

// The row loops are specialized on softcap, class weight and target kind, so
// each is straight-line code that vectorizes (libmvec exp/tanh).
template <bool kCap, class A>
inline A capped(A x, A cap) {
  if constexpr (kCap) {
    return cap * ::fastact::math::tanh(x / cap);
  } else {
    return x;
  }
}

template <bool kCap, bool kWeight, bool kProb, class S, class A = at::opmath_type<S>>
FA_CPU_CLONES RowSums<A> row_sums(const S* x, const S* y, const A* w, int64_t t, const CrossEntropyParams& p) {
  const int64_t C = p.classes;
  const A cap = p.softcap;
  // The max skips NaN (comparisons with NaN are false); a NaN logit still
  // makes the row's sum of exponentials, and so its lse and loss, NaN.
  A m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t c = 0; c < C; ++c) {
    const A z = capped<kCap>(static_cast<A>(x[c]), cap);
    m = z > m ? z : m;
  }
  // Blocks of 512 summed in opmath (SIMD), block sums accumulated in double:
  // a 50 k-class row summed lane by lane in float drifts by ~1e-5.
  double s = 0.0, wz = 0.0, wy = 0.0;
  const A mm = m == -INFINITY ? A(0) : m;
  const A keep = A(1) - A(p.smoothing), spread = A(p.smoothing) / static_cast<A>(C);
  const bool need_wz = kProb || p.smoothing > 0;
  constexpr int64_t kBlock = 512;
  for (int64_t b = 0; b < C; b += kBlock) {
    const int64_t e = std::min(C, b + kBlock);
    A bs = 0, bwz = 0, bwy = 0;
#pragma omp simd reduction(+ : bs)
    for (int64_t c = b; c < e; ++c) bs += ::fastact::math::exp_nonpositive(capped<kCap>(static_cast<A>(x[c]), cap) - mm);
    if (need_wz) {
#pragma omp simd reduction(+ : bwz, bwy)
      for (int64_t c = b; c < e; ++c) {
        const A z = capped<kCap>(static_cast<A>(x[c]), cap) - mm;
        A wc = A(1);
        if constexpr (kWeight) wc = w[c];
        if constexpr (kProb) {
          const A yc = keep * static_cast<A>(y[c]) + spread;
          bwy += wc * yc;
          bwz += wc * yc * z;
        } else {
          bwz += wc * z;
        }
      }
    }
    s += bs;
    wz += bwz;
    wy += bwy;
  }
  RowSums<A> r;
  r.log_s = static_cast<A>(std::log(s));
  r.lse = m == -INFINITY ? -INFINITY : static_cast<double>(m) + std::log(s);
  r.wz = static_cast<A>(wz);
  r.wy = static_cast<A>(wy);
  r.z_t = 0;
  r.w_t = 1;
  if (!kProb && t != p.ignore_index) {
    r.z_t = capped<kCap>(static_cast<A>(x[t]), cap) - mm;
    if constexpr (kWeight) r.w_t = w[t];
  }
  return r;
}

// Calls fn.template operator()<kCap, kWeight, kProb>() for the row loops that fit p.
template <class Fn>
void with_row_kind(const CrossEntropyParams& p, Fn&& fn) {
  auto pick_prob = [&](auto cap, auto weight) {
    if (p.prob_target) {
      fn(cap, weight, std::true_type{});
    } else {
      fn(cap, weight, std::false_type{});
    }
  };
  auto pick_weight = [&](auto cap) {
    if (p.has_weight) {
      pick_prob(cap, std::true_type{});
    } else {
      pick_prob(cap, std::false_type{});
    }
  };
  if (p.softcap > 0) {
    pick_weight(std::true_type{});
  } else {
    pick_weight(std::false_type{});
  }
}

int64_t checked_target(const int64_t* target, int64_t row, const CrossEntropyParams& p) {
  const int64_t t = target[row];
  TORCH_CHECK_INDEX(t == p.ignore_index || (t >= 0 && t < p.classes),
                    "fastact.cross_entropy: target ", t, " is out of bounds for ", p.classes,
                    " classes (row ", row, ")");
  return t;
}

// The row loops' inputs, with the class-weight sum read on the host.
template <class S, class A = at::opmath_type<S>>
struct RowInputs : CrossEntropyInputs<S> {
  A total_weight;
  explicit RowInputs(const CrossEntropyArgs& a)
      : CrossEntropyInputs<S>(a),
        total_weight(this->W ? *this->W : static_cast<A>(a.p.classes)) {}
};

std::tuple<at::Tensor, at::Tensor> cross_entropy_rows_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, double smoothing, double z_loss, double softcap) {
  CrossEntropyArgs a = cross_entropy_args(logits, target, weight, ignore_index, smoothing, z_loss, softcap);
  const CrossEntropyParams& p = a.p;
  const auto acc = a.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({p.rows}, a.logits.options().dtype(acc));
  at::Tensor lse = at::empty({p.rows}, a.logits.options().dtype(at::kDouble));
  FA_DISPATCH_FLOATING(a.logits.scalar_type(), "fastact.cross_entropy", [&] {
    using A = at::opmath_type<scalar_t>;
    const RowInputs<scalar_t> in(a);
    A* out = loss.mutable_data_ptr<A>();
    double* out_lse = lse.mutable_data_ptr<double>();
    const int64_t C = p.classes;
    // the loop specialization is chosen once per call, not per row
    with_row_kind(p, [&](auto cap, auto weight, auto prob) {
      at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
        // bfloat16/float16 rows widened to float once (read in two or three passes)
        half_convert::WideRow<scalar_t> x_row, y_row;
        for (int64_t r = begin; r < end; ++r) {
          const int64_t t = in.tgt ? checked_target(in.tgt, r, p) : 0;
          const RowSums<A> s =
              row_sums<decltype(cap)::value, decltype(weight)::value, decltype(prob)::value>(
                  x_row.load(in.x + r * C, C), in.y ? y_row.load(in.y + r * C, C) : nullptr, in.w, t, p);
          out_lse[r] = s.lse;
          if (in.tgt && t == p.ignore_index) {
            out[r] = 0;
            continue;
          }
          A l;
          if (p.prob_target) {  // not in.y: a target of no classes has no data pointer
            l = ce_prob_loss(s.wy, s.wz, s.log_s);
          } else {
            l = (A(1) - A(p.smoothing)) * s.w_t * (s.log_s - s.z_t) +
                A(p.smoothing) / static_cast<A>(C) * (in.total_weight * s.log_s - s.wz);
          }
          out[r] = l + ce_z_loss(A(p.z_loss), static_cast<A>(s.lse));
        }
      });
    });
  });
  return {loss, lse};
}

// d(logits) of one row; dr may alias xr (the in-place op): each element is
// read before it is written, and the target's element is computed first.
// p_c = exp((z_c - hi) - lo) from the float64 lse (split_lse): exact under a
// shift of the row (the float lse alone is off by up to half its ulp, 5e-4
// near 1e4).
template <bool kCap, bool kWeight, bool kProb, class S, class A>
FA_CPU_CLONES void row_backward(const S* xr, const S* yr, const A* w, int64_t t, A gr, double lse, A W,
                  const CrossEntropyParams& p, S* dr) {
  const LseSplit<A> split = split_lse<A>(lse);
  const A lse_r = split.hi, lse_lo = split.lo;
  const int64_t C = p.classes;
  const A cap = p.softcap, keep = A(1) - A(p.smoothing), spread = A(p.smoothing) / static_cast<A>(C);
  A sum_wy = 0;
  if constexpr (kProb) {
#pragma omp simd reduction(+ : sum_wy)
    for (int64_t c = 0; c < C; ++c) {
      A wc = A(1);
      if constexpr (kWeight) wc = w[c];
      sum_wy += wc * (keep * static_cast<A>(yr[c]) + spread);
    }
  }
  A wt = A(1);
  if constexpr (kWeight && !kProb) wt = w[t];
  const A zl = A(2) * A(p.z_loss) * lse_r;
  // dz_c without the target's one-hot term (no index compare in the SIMD
  // loop); the target element is computed with it beforehand.
  auto grad_of = [&](int64_t c, A onehot) {
    const A z = capped<kCap>(static_cast<A>(xr[c]), cap);
    const A pc = ::fastact::math::exp_nonpositive((z - lse_r) - lse_lo);
    A wc = A(1);
    if constexpr (kWeight) wc = w[c];
    A dz;
    if constexpr (kProb) {
      dz = sum_wy * pc - wc * (keep * static_cast<A>(yr[c]) + spread);
    } else {
      dz = keep * wt * (pc - onehot) + spread * (W * pc - wc);
    }
    dz = gr * (dz + zl * pc);
    if constexpr (kCap) dz *= A(1) - (z / cap) * (z / cap);
    return dz;
  };
  A d_t = 0;
  if constexpr (!kProb) d_t = grad_of(t, A(1));
#pragma GCC ivdep
  for (int64_t c = 0; c < C; ++c) dr[c] = static_cast<S>(grad_of(c, A(0)));
  if constexpr (!kProb) dr[t] = static_cast<S>(d_t);
}

// Writes d(logits) into out ([rows, C], contiguous; may be a.logits itself).
void backward_into(const at::Tensor& grad, const CrossEntropyArgs& a, const at::Tensor& lse,
                   const at::Tensor& out) {
  const CrossEntropyParams& p = a.p;
  const auto acc = a.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor g = grad.to(acc).contiguous();
  at::Tensor l = lse.to(at::kDouble).contiguous();
  FA_DISPATCH_FLOATING(a.logits.scalar_type(), "fastact.cross_entropy", [&] {
    using A = at::opmath_type<scalar_t>;
    const RowInputs<scalar_t> in(a);
    const A* gp = g.const_data_ptr<A>();
    const double* lp = l.const_data_ptr<double>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t C = p.classes;
    with_row_kind(p, [&](auto cap, auto weight, auto prob) {
      at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
        // bfloat16/float16: the row widened once, its gradient written over
        // the buffer (row_backward allows dr == xr) and narrowed
        half_convert::WideRow<scalar_t> x_row, y_row;
        for (int64_t r = begin; r < end; ++r) {
          const int64_t t = in.tgt ? checked_target(in.tgt, r, p) : -1;
          if (in.tgt && t == p.ignore_index) {
            std::fill(dst + r * C, dst + (r + 1) * C, scalar_t(0));
            continue;
          }
          const auto* xr = x_row.load(in.x + r * C, C);
          row_backward<decltype(cap)::value, decltype(weight)::value, decltype(prob)::value>(
              xr, in.y ? y_row.load(in.y + r * C, C) : nullptr, in.w, t, gp[r], lp[r], in.total_weight, p,
              x_row.out(dst + r * C, C));
          x_row.store(dst + r * C, C);
        }
      });
    });
  });
}

at::Tensor cross_entropy_rows_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                           const at::Tensor& target,
                                           const std::optional<at::Tensor>& weight,
                                           const at::Tensor& lse, int64_t ignore_index,
                                           double smoothing, double z_loss, double softcap) {
  const CrossEntropyArgs a =
      cross_entropy_args(logits, target, weight, ignore_index, smoothing, z_loss, softcap);
  check_rows_grad(grad, lse, a);
  at::Tensor dx = new_like(a.logits);
  backward_into(grad, a, lse, dx);
  return dx;
}

void cross_entropy_rows_backward_inplace_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                             const at::Tensor& target,
                                             const std::optional<at::Tensor>& weight,
                                             const at::Tensor& lse, int64_t ignore_index,
                                             double smoothing, double z_loss, double softcap) {
  check_inplace_logits(logits);
  const CrossEntropyArgs a =
      cross_entropy_args(logits, target, weight, ignore_index, smoothing, z_loss, softcap);
  check_rows_grad(grad, lse, a);
  backward_into(grad, a, lse, logits);
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, CPU, m) {
  m.impl("cross_entropy_rows", &::fastact::cross_entropy_rows_cpu);
  m.impl("cross_entropy_rows_backward", &::fastact::cross_entropy_rows_backward_cpu);
  m.impl("cross_entropy_rows_backward_", &::fastact::cross_entropy_rows_backward_inplace_cpu);
}
