// CUDA kernels of the cross-entropy rows (see cross_entropy_ops.h).
//
// Launches follow the row plans of row_launch.cuh (a lane group per short
// row, else blocks over rows or spans of rows).
// Forward: each team reads the logits of its row or span with 128-bit loads
// and folds them into an online (max, sum-of-exp) pair (one rescale per
// vector) and the row's weighted sums. A team with a whole row writes its
// loss and lse; with few rows and a large vocabulary (e.g. 512 x 128k), each
// row is split over several blocks whose partial pairs a second kernel
// merges, so the GPU still fills.
// Backward (class-index targets): an elementwise pass over (row, span) with
// the row's coefficients computed once per team; the gradient may overwrite
// the logits (the in-place op). Class-probability targets need a row sum of
// the target first: a team per row, or with few long rows a first kernel of
// per-span partial sums that each span's block then merges.
// Everything stays on the device: the class weight sum is a device tensor,
// an out-of-range target trips a device-side assert (as in PyTorch).
#include <torch/library.h>

#include <ATen/OpMathType.h>

#include "cuda/block_reduce.cuh"
#include "cuda/launcher.cuh"
#include "cuda/row_launch.cuh"
#include "fastact/cross_entropy_ops.h"

namespace fastact {
namespace {

constexpr int kThreads = kRowThreads;

// One block's share of a row: the online pair (NaN-faithful: a NaN logit
// leaves s NaN through every merge), the weighted sum wz = sum_c o_c (z_c - ref)
// relative to ref = ce_ref(m) and the weight sum o = sum_c o_c, with o_c = w_c
// (label smoothing) or w_c y'_c (probability targets). Relative terms keep the
// loss exact under a shift of the row (see cross_entropy_ops.h).
template <class A>
struct CePartial {
  A m, s, wz, o;
};

template <class A>
__device__ __forceinline__ A weight_of(const A* w, int64_t c FA_SITE) {
  return w ? gload(w + c FA_SITE_ARG) : A(1);
}

// The class weights of columns [c, c + N) of a vector step (all 1 without
// weights): one N-wide load where w + c is aligned for it (the steps start
// on the logits row's 16-byte boundaries: with rows of whole vectors, the
// weights' too), else N scalar loads.
template <int N, class A>
__device__ __forceinline__ VecOf<A, N> weights_of(const A* w, int64_t c FA_SITE) {
  VecOf<A, N> o;
  if (w == nullptr) {
#pragma unroll
    for (int j = 0; j < N; ++j) o.v[j] = A(1);
  } else if (N > 1 && reinterpret_cast<uintptr_t>(w + c) % sizeof(VecOf<A, N>) == 0) {
    o = gload(reinterpret_cast<const VecOf<A, N>*>(w + c) FA_SITE_ARG);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) o.v[j] = gload(w + c + j FA_SITE_ARG);
  }
  return o;
}

// The reference the weighted sums are relative to: the running max while it
// is finite (a leading -inf or a NaN leaves it at 0).
template <class A>
__device__ __forceinline__ A ce_ref(A m) {
  return m - m == A(0) ? m : A(0);
}

// wz relative to ref(m_from), moved to ref(m_to): wz - (ref_to - ref_from) o.
template <class A>
__device__ __forceinline__ A rebase(A wz, A o, A m_from, A m_to) {
  return o == A(0) ? wz : wz - (ce_ref(m_to) - ce_ref(m_from)) * o;
}

template <class S, class A>
__device__ void finish_row(const CrossEntropyRows<S>& in, const CrossEntropyParams& p, int64_t r,
                           const OnlineLse<A>& pair, A wz, A o, A* loss, double* lse_out) {
  const int64_t C = p.classes;
  // lse = m + log s in float64 (what backward reads); the loss from log s
  // and logits relative to m
  const double lse = pair.m == -INFINITY ? static_cast<double>(pair.m + pair.s)
                                         : static_cast<double>(pair.m) + ::log(static_cast<double>(pair.s));
  gstore(lse_out + r, lse);
  const A log_s = ::fastact::math::log(pair.s);
  const A keep = A(1) - A(p.smoothing), spread = A(p.smoothing) / static_cast<A>(C);
  A l;
  if (p.prob_target) {  // not in.y: the target of a row of no classes has no data pointer
    l = ce_prob_loss(o, wz, log_s);
  } else {
    const int64_t t = gload(in.tgt + r);
    if (t == p.ignore_index) {
      gstore(loss + r, A(0));
      return;
    }
    FA_DEVICE_ASSERT(t >= 0 && t < C, "fastact.cross_entropy: target out of bounds");
    const A z_t = ce_cap(static_cast<A>(gload(in.x + r * C + t)), A(p.softcap)) - ce_ref(pair.m);
    const A w_t = weight_of(in.w, t);
    const A W = in.W ? gload(in.W) : static_cast<A>(C);
    l = keep * w_t * (log_s - z_t) + spread * (W * log_s - wz);
  }
  gstore(loss + r, l + ce_z_loss(A(p.z_loss), static_cast<A>(lse)));
}

// grid (row blocks, splits): the team of row r in block (., k) folds columns
// [k*span, (k+1)*span) of row r; with one split it finishes the row, else it
// writes partial[k*rows+r].
template <int VEC, class Team, class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    ce_forward_kernel(Team, CrossEntropyRows<S> in, CrossEntropyParams p, int64_t span, A* loss,
                      double* lse_out, CePartial<A>* partial) {
  const RowSpan rs = row_span<Team>(p.rows, p.classes, span);
  const int64_t r = rs.row, C = p.classes, lo = rs.lo, hi = rs.hi;
  const S* xr = in.x + r * C;
  const S* yr = p.prob_target ? in.y + r * C : nullptr;
  const A cap = p.softcap;
  const A keep = A(1) - A(p.smoothing), spread = A(p.smoothing) / static_cast<A>(C);
  const bool weighted_sum = p.prob_target || p.smoothing > 0;
  OnlineLse<A> pair;
  A wz = 0, o = 0;
  for_each_in_span<VEC, Team>(xr, lo, hi, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<S, N> xv = load_vec<N>(xr + c);
    A z[N];
#pragma unroll
    for (int j = 0; j < N; ++j) z[j] = ce_cap(static_cast<A>(xv.v[j]), cap);
    const A m_before = pair.m;
    pair.add_all(z);  // one rescale per vector
    if (!weighted_sum) return;
    wz = rebase(wz, o, m_before, pair.m);
    const A ref = ce_ref(pair.m);
    const VecOf<A, N> wv = weights_of<N>(in.w, c);
    if (p.prob_target) {
      const VecOf<S, N> yv = load_vec<N>(yr + c);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const A o_j = wv.v[j] * (keep * static_cast<A>(yv.v[j]) + spread);
        o += o_j;
        wz += o_j * (z[j] - ref);
      }
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const A o_j = wv.v[j];
        o += o_j;
        wz += o_j * (z[j] - ref);
      }
    }
  });
  const OnlineLse<A> row = Team::lse(pair);
  A row_wz = 0, row_o = 0;
  if (weighted_sum) {  // every thread's sum moved to the team's max, then added
    row_wz = Team::sum(rebase(wz, o, pair.m, row.m));
    row_o = Team::sum(o);
  }
  if (Team::rank() != 0 || !rs.live) return;
  if (gridDim.y == 1) {
    finish_row(in, p, r, row, row_wz, row_o, loss, lse_out);
  } else {
    // split-major, so that the merge kernel's threads (one per row) read
    // consecutive partials
    gstore(partial + blockIdx.y * p.rows + r, CePartial<A>{row.m, row.s, row_wz, row_o});
  }
}

// One thread per row merges the row's partials and finishes it.
template <class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(128)
    ce_merge_kernel(CrossEntropyRows<S> in, CrossEntropyParams p, int splits,
                    const CePartial<A>* partial, A* loss, double* lse_out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= p.rows) return;
  OnlineLse<A> pair;
  for (int k = 0; k < splits; ++k) {
    const CePartial<A> q = gload(partial + k * p.rows + r);
    pair.merge(OnlineLse<A>{q.m, q.s});
  }
  A wz = 0, o = 0;
  for (int k = 0; k < splits; ++k) {
    const CePartial<A> q = gload(partial + k * p.rows + r);
    wz += rebase(q.wz, q.o, q.m, pair.m);
    o += q.o;
  }
  finish_row(in, p, r, pair, wz, o, loss, lse_out);
}

// Class-index targets: grid (rows, spans), dx may be in.x itself.
//   dz_c = a p_c - b w_c - [c == t] tt,  p_c = exp((z_c - hi) - lo)
// (hi + lo: the float64 lse, split_lse: exact under a shift of the row)
// with a = g (keep w_t + spread W + 2 z_loss lse), b = g spread, tt = g keep w_t.
template <int VEC, class Team, class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    ce_backward_index_kernel(Team, CrossEntropyRows<S> in, CrossEntropyParams p, int64_t span,
                             const A* grad, const double* lse, S* dx) {
  const RowSpan rs = row_span<Team>(p.rows, p.classes, span);
  if (!rs.live) return;  // no reduction here: a team past the last row just leaves
  const int64_t r = rs.row, C = p.classes, lo = rs.lo, hi = rs.hi;
  const S* xr = in.x + r * C;
  S* dr = dx + r * C;
  const int64_t t = gload(in.tgt + r);
  if (t == p.ignore_index) {
    for_each_in_span<VEC, Team>(xr, lo, hi, [&](int64_t c, auto width) {
      constexpr int N = decltype(width)::value;
      VecOf<S, N> zero;
#pragma unroll
      for (int j = 0; j < N; ++j) zero.v[j] = S(0);
      store_vec<N>(dr + c, zero);
    });
    return;
  }
  FA_DEVICE_ASSERT(t >= 0 && t < C, "fastact.cross_entropy: target out of bounds");
  const A cap = p.softcap;
  const A keep = A(1) - A(p.smoothing), spread = A(p.smoothing) / static_cast<A>(C);
  const A g = gload(grad + r);
  const LseSplit<A> l = split_lse<A>(gload(lse + r));
  const A w_t = weight_of(in.w, t);
  const A W = in.W ? gload(in.W) : static_cast<A>(C);
  const A a = g * (keep * w_t + spread * W + A(2) * A(p.z_loss) * l.hi);
  const A b = g * spread, tt = g * keep * w_t;
  for_each_in_span<VEC, Team>(xr, lo, hi, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<S, N> xv = load_vec<N>(xr + c);
    const VecOf<A, N> wv = weights_of<N>(in.w, c);
    VecOf<S, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const A z = ce_cap(static_cast<A>(xv.v[j]), cap);
      A dz = a * ::fastact::math::exp((z - l.hi) - l.lo) - b * wv.v[j];
      if (c + j == t) dz -= tt;
      if (cap > A(0)) dz *= A(1) - (z / cap) * (z / cap);
      out.v[j] = static_cast<S>(dz);
    }
    store_vec<N>(dr + c, out);
  });
}

// The target mass sum_c w_c y'_c over columns [lo, hi) of a row.
template <int VEC, class Team, class S, class A>
__device__ __forceinline__ A target_mass(const CrossEntropyRows<S>& in, const CrossEntropyParams& p, const S* yr,
                                         int64_t lo, int64_t hi) {
  const A keep = A(1) - A(p.smoothing), spread = A(p.smoothing) / static_cast<A>(p.classes);
  A part = 0;
  for_each_in_span<VEC, Team>(yr, lo, hi, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<S, N> yv = load_vec<N>(yr + c);
    const VecOf<A, N> wv = weights_of<N>(in.w, c);
#pragma unroll
    for (int j = 0; j < N; ++j) part += wv.v[j] * (keep * static_cast<A>(yv.v[j]) + spread);
  });
  return part;
}

// Class-probability targets, split rows, first pass: block (r, k) writes the
// target mass of span k of row r to partial[k*rows+r].
template <int VEC, class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    ce_backward_prob_partial_kernel(CrossEntropyRows<S> in, CrossEntropyParams p, int64_t span, A* partial) {
  const RowSpan rs = row_span<BlockTeam>(p.rows, p.classes, span);
  const A part = block_sum(target_mass<VEC, BlockTeam, S, A>(in, p, in.y + rs.row * p.classes, rs.lo, rs.hi));
  if (threadIdx.x == 0) gstore(partial + blockIdx.y * p.rows + rs.row, part);
}

// Class-probability targets: S = sum_c w_c y'_c from the team's row, or
// (split rows) from the partials of its spans, then
//   dz_c = g (S p_c - w_c y'_c + 2 z_loss lse p_c)
template <int VEC, class Team, class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    ce_backward_prob_kernel(Team, CrossEntropyRows<S> in, CrossEntropyParams p, int64_t span,
                            const A* partial, const A* grad, const double* lse, S* dx) {
  const RowSpan rs = row_span<Team>(p.rows, p.classes, span);
  const int64_t r = rs.row, C = p.classes;
  const S* xr = in.x + r * C;
  const S* yr = in.y + r * C;
  S* dr = dx + r * C;
  const A keep = A(1) - A(p.smoothing), spread = A(p.smoothing) / static_cast<A>(C);
  A part = 0;
  if (partial) {
    for (int64_t k = Team::rank(); k < gridDim.y; k += Team::size()) part += gload(partial + k * p.rows + r);
  } else {
    part = target_mass<VEC, Team, S, A>(in, p, yr, rs.lo, rs.hi);
  }
  const A sum_wy = Team::sum(part);
  if (!rs.live) return;
  const A cap = p.softcap;
  const A g = gload(grad + r);
  const LseSplit<A> l = split_lse<A>(gload(lse + r));
  const A coef = sum_wy + A(2) * A(p.z_loss) * l.hi;
  for_each_in_span<VEC, Team>(xr, rs.lo, rs.hi, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<S, N> xv = load_vec<N>(xr + c);
    const VecOf<S, N> yv = load_vec<N>(yr + c);
    const VecOf<A, N> wv = weights_of<N>(in.w, c);
    VecOf<S, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const A z = ce_cap(static_cast<A>(xv.v[j]), cap);
      const A y = keep * static_cast<A>(yv.v[j]) + spread;
      A dz = g * (coef * ::fastact::math::exp((z - l.hi) - l.lo) - wv.v[j] * y);
      if (cap > A(0)) dz *= A(1) - (z / cap) * (z / cap);
      out.v[j] = static_cast<S>(dz);
    }
    store_vec<N>(dr + c, out);
  });
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_rows_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, double smoothing, double z_loss, double softcap) {
  const DeviceGuard guard(logits.device());
  const CrossEntropyArgs a =
      cross_entropy_args(logits, target, weight, ignore_index, smoothing, z_loss, softcap);
  const CrossEntropyParams& p = a.p;
  const auto acc = a.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({p.rows}, a.logits.options().dtype(acc));
  at::Tensor lse = at::empty({p.rows}, a.logits.options().dtype(at::kDouble));
  if (p.rows == 0) return {loss, lse};
  FA_DISPATCH_FLOATING(a.logits.scalar_type(), "fastact.cross_entropy", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const CrossEntropyInputs<scalar_t> inputs(a);
    const CrossEntropyRows<scalar_t> in = inputs.rows();
    const bool vec = same_alignment(in.x, in.y);
    const RowPlan plan = row_plan(RowSplit::kToFill, p.rows, p.classes, sizeof(scalar_t));
    at::Tensor partial;
    CePartial<A>* part_ptr = row_partials<CePartial<A>>(plan, p.rows, a.logits, partial);
    const Stream stream = current_stream();
    A* loss_ptr = loss.mutable_data_ptr<A>();
    double* lse_ptr = lse.mutable_data_ptr<double>();
    with_row_team(plan.lanes, [&](auto team) {
      using Team = decltype(team);
      if (vec) {
        FA_LAUNCH(plan.grid, kThreads, 0, stream, ce_forward_kernel<kVec, Team, scalar_t>)(
            team, in, p, plan.span, loss_ptr, lse_ptr, part_ptr);
      } else {
        FA_LAUNCH(plan.grid, kThreads, 0, stream, ce_forward_kernel<1, Team, scalar_t>)(
            team, in, p, plan.span, loss_ptr, lse_ptr, part_ptr);
      }
    });
    if (part_ptr) {
      FA_LAUNCH(ceil_div(p.rows, 128), 128, 0, stream, ce_merge_kernel<scalar_t>)(
          in, p, static_cast<int>(plan.splits), part_ptr, loss_ptr, lse_ptr);
    }
  });
  return {loss, lse};
}

void backward_into(const at::Tensor& grad, const CrossEntropyArgs& a, const at::Tensor& lse,
                   const at::Tensor& out) {
  const CrossEntropyParams& p = a.p;
  if (p.rows == 0 || p.classes == 0) return;
  const auto acc = a.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor g = grad.to(acc).contiguous();
  const at::Tensor l = lse.to(at::kDouble).contiguous();
  FA_DISPATCH_FLOATING(a.logits.scalar_type(), "fastact.cross_entropy", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const CrossEntropyInputs<scalar_t> inputs(a);
    const CrossEntropyRows<scalar_t> in = inputs.rows();
    scalar_t* dx = out.mutable_data_ptr<scalar_t>();
    const bool vec = same_alignment(in.x, in.y, dx);
    const Stream stream = current_stream();
    const A* gp = g.const_data_ptr<A>();
    const double* lp = l.const_data_ptr<double>();
    if (p.prob_target) {
      const RowPlan plan = row_plan(RowSplit::kToFill, p.rows, p.classes, sizeof(scalar_t));
      at::Tensor partial;
      A* part = row_partials<A>(plan, p.rows, a.logits, partial);
      if (part) {
        if (vec) {
          FA_LAUNCH(plan.grid, kThreads, 0, stream, ce_backward_prob_partial_kernel<kVec, scalar_t>)(
              in, p, plan.span, part);
        } else {
          FA_LAUNCH(plan.grid, kThreads, 0, stream, ce_backward_prob_partial_kernel<1, scalar_t>)(
              in, p, plan.span, part);
        }
      }
      with_row_team(plan.lanes, [&](auto team) {
        using Team = decltype(team);
        if (vec) {
          FA_LAUNCH(plan.grid, kThreads, 0, stream, ce_backward_prob_kernel<kVec, Team, scalar_t>)(
              team, in, p, plan.span, part, gp, lp, dx);
        } else {
          FA_LAUNCH(plan.grid, kThreads, 0, stream, ce_backward_prob_kernel<1, Team, scalar_t>)(
              team, in, p, plan.span, part, gp, lp, dx);
        }
      });
    } else {
      // long rows: a block writes up to 4 vectors per thread of one row
      const RowPlan plan = row_plan(RowSplit::kAlways, p.rows, p.classes, sizeof(scalar_t));
      with_row_team(plan.lanes, [&](auto team) {
        using Team = decltype(team);
        if (vec) {
          FA_LAUNCH(plan.grid, kThreads, 0, stream, ce_backward_index_kernel<kVec, Team, scalar_t>)(
              team, in, p, plan.span, gp, lp, dx);
        } else {
          FA_LAUNCH(plan.grid, kThreads, 0, stream, ce_backward_index_kernel<1, Team, scalar_t>)(
              team, in, p, plan.span, gp, lp, dx);
        }
      });
    }
  });
}

at::Tensor cross_entropy_rows_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                            const at::Tensor& target,
                                            const std::optional<at::Tensor>& weight,
                                            const at::Tensor& lse, int64_t ignore_index,
                                            double smoothing, double z_loss, double softcap) {
  const DeviceGuard guard(logits.device());
  const CrossEntropyArgs a =
      cross_entropy_args(logits, target, weight, ignore_index, smoothing, z_loss, softcap);
  check_rows_grad(grad, lse, a);
  at::Tensor dx = at::empty_like(a.logits);
  backward_into(grad, a, lse, dx);
  return dx;
}

void cross_entropy_rows_backward_inplace_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                              const at::Tensor& target,
                                              const std::optional<at::Tensor>& weight,
                                              const at::Tensor& lse, int64_t ignore_index,
                                              double smoothing, double z_loss, double softcap) {
  const DeviceGuard guard(logits.device());
  check_inplace_logits(logits);
  const CrossEntropyArgs a =
      cross_entropy_args(logits, target, weight, ignore_index, smoothing, z_loss, softcap);
  check_rows_grad(grad, lse, a);
  backward_into(grad, a, lse, logits);
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, FA_DEVICE_KEY, m) {
  m.impl("cross_entropy_rows", &::fastact::cross_entropy_rows_cuda);
  m.impl("cross_entropy_rows_backward", &::fastact::cross_entropy_rows_backward_cuda);
  m.impl("cross_entropy_rows_backward_", &::fastact::cross_entropy_rows_backward_inplace_cuda);
}
