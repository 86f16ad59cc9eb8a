// CPU kernels of the cross-entropy rows (see cross_entropy_ops.h): rows in
// parallel, each in two vectorizable passes (max, then the sums).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "fastact/cross_entropy_ops.h"

namespace fastact {
namespace {

template <class A>
struct RowSums {
  A lse, z_t, w_t, wz;  // wz: sum_c w_c z_c (smoothing) or sum_c w_c y'_c z_c (prob.)
  A wy;                 // prob. targets: S = sum_c w_c y'_c
};

template <class S, class A = at::opmath_type<S>>
RowSums<A> row_sums(const S* x, const S* y, const A* w, int64_t t, const CrossEntropyParams& p) {
  const int64_t C = p.classes;
  const A cap = p.softcap;
  A m = -INFINITY;
  bool nan = false;
#pragma omp simd reduction(max : m) reduction(| : nan)
  for (int64_t c = 0; c < C; ++c) {
    const A z = ce_cap(static_cast<A>(x[c]), cap);
    m = z > m ? z : m;
    nan |= z != z;
  }
  // Blocks of 512 summed in float (SIMD), block sums accumulated in double:
  // a 50 k-class row summed lane by lane in float drifts by ~1e-5.
  double s = 0.0, wz = 0.0, wy = 0.0;
  const A mm = m == -INFINITY ? A(0) : m;
  const A keep = A(1) - A(p.smoothing), spread = A(p.smoothing) / static_cast<A>(C);
  constexpr int64_t kBlock = 512;
  for (int64_t b = 0; b < C; b += kBlock) {
    const int64_t e = std::min(C, b + kBlock);
    A bs = 0, bwz = 0, bwy = 0;
#pragma omp simd reduction(+ : bs, bwz, bwy)
    for (int64_t c = b; c < e; ++c) {
      const A z = ce_cap(static_cast<A>(x[c]), cap);
      bs += ::fastact::math::exp(z - mm);
      const A wc = w ? w[c] : A(1);
      if (y) {
        const A yc = keep * static_cast<A>(y[c]) + spread;
        bwy += wc * yc;
        bwz += wc * yc * z;
      } else {
        bwz += wc * z;
      }
    }
    s += bs;
    wz += bwz;
    wy += bwy;
  }
  RowSums<A> r;
  r.lse = nan ? A(NAN) : (m == -INFINITY ? A(-INFINITY) : m + static_cast<A>(std::log(s)));
  r.wz = static_cast<A>(wz);
  r.wy = static_cast<A>(wy);
  r.z_t = 0;
  r.w_t = 1;
  if (!y && t != p.ignore_index) {
    r.z_t = ce_cap(static_cast<A>(x[t]), cap);
    r.w_t = w ? w[t] : A(1);
  }
  return r;
}

int64_t checked_target(const int64_t* target, int64_t row, const CrossEntropyParams& p) {
  const int64_t t = target[row];
  TORCH_CHECK_INDEX(t == p.ignore_index || (t >= 0 && t < p.classes),
                    "fastact.cross_entropy: target ", t, " is out of bounds for ", p.classes,
                    " classes (row ", row, ")");
  return t;
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_rows_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, double smoothing, double z_loss, double softcap) {
  CrossEntropyArgs a = cross_entropy_args(logits, target, weight, ignore_index, smoothing, z_loss, softcap);
  const CrossEntropyParams& p = a.p;
  const auto acc = a.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({p.rows}, a.logits.options().dtype(acc));
  at::Tensor lse = at::empty({p.rows}, a.logits.options().dtype(acc));
  FA_DISPATCH_FLOATING(a.logits.scalar_type(), "fastact.cross_entropy", [&] {
    using A = at::opmath_type<scalar_t>;
    const at::Tensor wt = p.has_weight ? a.weight.to(acc) : at::Tensor();
    const A* w = p.has_weight ? wt.const_data_ptr<A>() : nullptr;
    const A W = p.has_weight ? wt.sum().item<A>() : static_cast<A>(p.classes);
    const scalar_t* x = a.logits.const_data_ptr<scalar_t>();
    const scalar_t* y = p.prob_target ? a.target.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* tgt = p.prob_target ? nullptr : a.target.const_data_ptr<int64_t>();
    A* out = loss.mutable_data_ptr<A>();
    A* out_lse = lse.mutable_data_ptr<A>();
    at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t t = tgt ? checked_target(tgt, r, p) : 0;
        const RowSums<A> s = row_sums(x + r * p.classes, y ? y + r * p.classes : nullptr, w, t, p);
        out_lse[r] = s.lse;
        if (tgt && t == p.ignore_index) {
          out[r] = 0;
          continue;
        }
        A l;
        if (y) {
          l = s.wy * s.lse - s.wz;
        } else {
          l = (A(1) - A(p.smoothing)) * s.w_t * (s.lse - s.z_t) +
              A(p.smoothing) / static_cast<A>(p.classes) * (W * s.lse - s.wz);
        }
        out[r] = l + A(p.z_loss) * s.lse * s.lse;
      }
    });
  });
  return {loss, lse};
}

// d(logits) of one row.
template <class S, class A>
void row_backward(const S* xr, const S* yr, const A* w, int64_t t, A gr, A lse_r, A W,
                  const CrossEntropyParams& p, S* dr) {
  const int64_t C = p.classes;
  const A cap = p.softcap, keep = A(1) - A(p.smoothing), spread = A(p.smoothing) / static_cast<A>(C);
  A sum_wy = 0;
  if (yr) {
#pragma omp simd reduction(+ : sum_wy)
    for (int64_t c = 0; c < C; ++c)
      sum_wy += (w ? w[c] : A(1)) * (keep * static_cast<A>(yr[c]) + spread);
  }
  const A wt = (!yr && w) ? w[t] : A(1);
  const A zl = A(2) * A(p.z_loss) * lse_r;
#pragma GCC ivdep
  for (int64_t c = 0; c < C; ++c) {
    const A z = ce_cap(static_cast<A>(xr[c]), cap);
    const A pc = ::fastact::math::exp(z - lse_r);
    const A wc = w ? w[c] : A(1);
    A dz;
    if (yr) {
      dz = sum_wy * pc - wc * (keep * static_cast<A>(yr[c]) + spread);
    } else {
      dz = keep * wt * (pc - (c == t ? A(1) : A(0))) + spread * (W * pc - wc);
    }
    dz = gr * (dz + zl * pc);
    const A dcap = cap > A(0) ? A(1) - (z / cap) * (z / cap) : A(1);
    dr[c] = static_cast<S>(dz * dcap);
  }
}

at::Tensor cross_entropy_rows_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                           const at::Tensor& target,
                                           const std::optional<at::Tensor>& weight,
                                           const at::Tensor& lse, int64_t ignore_index,
                                           double smoothing, double z_loss, double softcap) {
  CrossEntropyArgs a = cross_entropy_args(logits, target, weight, ignore_index, smoothing, z_loss, softcap);
  const CrossEntropyParams& p = a.p;
  const auto acc = a.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor g = grad.to(acc).contiguous();
  at::Tensor l = lse.to(acc).contiguous();
  at::Tensor dx = at::empty_like(a.logits);
  FA_DISPATCH_FLOATING(a.logits.scalar_type(), "fastact.cross_entropy", [&] {
    using A = at::opmath_type<scalar_t>;
    const at::Tensor wt = p.has_weight ? a.weight.to(acc) : at::Tensor();
    const A* w = p.has_weight ? wt.const_data_ptr<A>() : nullptr;
    const A W = p.has_weight ? wt.sum().item<A>() : static_cast<A>(p.classes);
    const scalar_t* x = a.logits.const_data_ptr<scalar_t>();
    const scalar_t* y = p.prob_target ? a.target.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* tgt = p.prob_target ? nullptr : a.target.const_data_ptr<int64_t>();
    const A* gp = g.const_data_ptr<A>();
    const A* lp = l.const_data_ptr<A>();
    scalar_t* out = dx.mutable_data_ptr<scalar_t>();
    const int64_t C = p.classes;
    at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t t = tgt ? checked_target(tgt, r, p) : -1;
        if (tgt && t == p.ignore_index) {
          std::fill(out + r * C, out + (r + 1) * C, scalar_t(0));
          continue;
        }
        row_backward(x + r * C, y ? y + r * C : nullptr, w, t, gp[r], lp[r], W, p, out + r * C);
      }
    });
  });
  return dx;
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, CPU, m) {
  m.impl("cross_entropy_rows", &::fastact::cross_entropy_rows_cpu);
  m.impl("cross_entropy_rows_backward", &::fastact::cross_entropy_rows_backward_cpu);
}
