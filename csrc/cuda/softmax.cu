// CUDA kernels of softmax / log_softmax over rows [R, C] and their backward,
// on the row plans of row_launch.cuh: a lane group or a block per row folds
// it into an online (max, sum) (backward: the row sum of g y, or of g), then
// writes it once; with few long rows, blocks over spans of a row fold them
// into partials first, which each span's block merges before writing.
// 128-bit loads and stores (for_each_in_span).
#include <ATen/OpMathType.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "fastact/checks.h"
#include "cuda/block_reduce.cuh"
#include "cuda/row_launch.cuh"
#include "fastact/dispatch.h"

namespace fastact {
namespace {

constexpr int kThreads = kRowThreads;

template <int VEC, class Team, class S, class A>
__device__ __forceinline__ OnlineLse<A> fold_lse(const S* xr, int64_t lo, int64_t hi) {
  OnlineLse<A> part;  // NaN-faithful: a NaN value makes the lse NaN
  for_each_in_span<VEC, Team>(xr, lo, hi, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<S, N> xv = load_vec<N>(xr + c);
#pragma unroll
    for (int j = 0; j < N; ++j) part.add(static_cast<A>(xv.v[j]));
  });
  return part;
}

// sum_c g_c y_c over [lo, hi) (log_softmax: sum_c g_c).
template <int VEC, class Team, class S, class A>
__device__ __forceinline__ A fold_grad_dot(const S* dyr, const S* yr, int64_t lo, int64_t hi, bool log) {
  A part = 0;
  for_each_in_span<VEC, Team>(yr, lo, hi, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<S, N> gv = load_vec<N>(dyr + c);
    const VecOf<S, N> yv = load_vec<N>(yr + c);
#pragma unroll
    for (int j = 0; j < N; ++j)
      part += log ? static_cast<A>(gv.v[j]) : static_cast<A>(gv.v[j]) * static_cast<A>(yv.v[j]);
  });
  return part;
}

// Split rows, first pass: block (r, k) folds span k of row r into
// partial[k * rows + r] (split-major, as the cross-entropy partials).
template <int VEC, class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    softmax_partial_kernel(const S* x, int64_t rows, int64_t C, int64_t span, OnlineLse<A>* partial) {
  const RowSpan rs = row_span<BlockTeam>(rows, C, span);
  const OnlineLse<A> part = block_lse(fold_lse<VEC, BlockTeam, S, A>(x + rs.row * C, rs.lo, rs.hi));
  if (threadIdx.x == 0) gstore(partial + blockIdx.y * rows + rs.row, part);
}

// The row's lse from its own columns, or (split rows) from the partials of
// its spans, merged in the same order by every block of the row.
template <int VEC, class Team, class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    softmax_kernel(Team, const S* x, S* y, int64_t rows, int64_t C, int64_t span, const OnlineLse<A>* partial,
                   bool log) {
  const RowSpan rs = row_span<Team>(rows, C, span);
  const S* xr = x + rs.row * C;
  S* yr = y + rs.row * C;
  OnlineLse<A> part;
  if (partial) {
    for (int64_t k = Team::rank(); k < gridDim.y; k += Team::size()) part.merge(gload(partial + k * rows + rs.row));
  } else {
    part = fold_lse<VEC, Team, S, A>(xr, rs.lo, rs.hi);
  }
  const A lse = Team::lse(part).value();
  for_each_in_span<VEC, Team>(xr, rs.lo, rs.hi, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<S, N> xv = load_vec<N>(xr + c);
    VecOf<S, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const A v = static_cast<A>(xv.v[j]) - lse;
      out.v[j] = static_cast<S>(log ? v : ::fastact::math::exp(v));
    }
    store_vec<N>(yr + c, out);
  });
}

template <int VEC, class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    softmax_backward_partial_kernel(const S* dy, const S* y, int64_t rows, int64_t C, int64_t span, bool log,
                                    A* partial) {
  const RowSpan rs = row_span<BlockTeam>(rows, C, span);
  const int64_t off = rs.row * C;
  const A part = block_sum(fold_grad_dot<VEC, BlockTeam, S, A>(dy + off, y + off, rs.lo, rs.hi, log));
  if (threadIdx.x == 0) gstore(partial + blockIdx.y * rows + rs.row, part);
}

template <int VEC, class Team, class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    softmax_backward_kernel(Team, const S* dy, const S* y, S* dx, int64_t rows, int64_t C, int64_t span,
                            const A* partial, bool log) {
  const RowSpan rs = row_span<Team>(rows, C, span);
  const int64_t off = rs.row * C;
  const S* dyr = dy + off;
  const S* yr = y + off;
  A part = 0;
  if (partial) {
    for (int64_t k = Team::rank(); k < gridDim.y; k += Team::size()) part += gload(partial + k * rows + rs.row);
  } else {
    part = fold_grad_dot<VEC, Team, S, A>(dyr, yr, rs.lo, rs.hi, log);
  }
  const A s = Team::sum(part);
  for_each_in_span<VEC, Team>(yr, rs.lo, rs.hi, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<S, N> gv = load_vec<N>(dyr + c);
    const VecOf<S, N> yv = load_vec<N>(yr + c);
    VecOf<S, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const A yc = static_cast<A>(yv.v[j]), g = static_cast<A>(gv.v[j]);
      out.v[j] = static_cast<S>(log ? g - ::fastact::math::exp(yc) * s : yc * (g - s));
    }
    store_vec<N>(dx + off + c, out);
  });
}

at::Tensor softmax_rows_cuda(const at::Tensor& input, bool log) {
  const char* op = log ? "fastact.log_softmax" : "fastact.softmax";
  check_float(input, op);
  TORCH_CHECK_VALUE(input.dim() == 2, op, ": expected [rows, classes], got ", input.sizes());
  const DeviceGuard guard(input.device());
  at::Tensor x = input.contiguous();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.softmax", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const int64_t rows = x.size(0), C = x.size(1);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const Stream stream = current_stream();
    const RowPlan plan = row_plan(RowSplit::kToFill, rows, C, sizeof(scalar_t));
    at::Tensor keep;
    OnlineLse<A>* part = row_partials<OnlineLse<A>>(plan, rows, x, keep);
    const bool vec = same_alignment(xp, yp);
    if (part) {
      if (vec) {
        FA_LAUNCH(plan.grid, kThreads, 0, stream, softmax_partial_kernel<kVec, scalar_t>)(xp, rows, C, plan.span, part);
      } else {
        FA_LAUNCH(plan.grid, kThreads, 0, stream, softmax_partial_kernel<1, scalar_t>)(xp, rows, C, plan.span, part);
      }
    }
    with_row_team(plan.lanes, [&](auto team) {
      using Team = decltype(team);
      if (vec) {
        FA_LAUNCH(plan.grid, kThreads, 0, stream, softmax_kernel<kVec, Team, scalar_t>)(
            team, xp, yp, rows, C, plan.span, part, log);
      } else {
        FA_LAUNCH(plan.grid, kThreads, 0, stream, softmax_kernel<1, Team, scalar_t>)(
            team, xp, yp, rows, C, plan.span, part, log);
      }
    });
  });
  return y;
}

at::Tensor softmax_rows_backward_cuda(const at::Tensor& grad, const at::Tensor& output, bool log) {
  const char* op = log ? "fastact.log_softmax" : "fastact.softmax";
  check_float(output, op, "output");
  check_like(grad, output, op, "grad_output", "output");
  const DeviceGuard guard(output.device());
  at::Tensor y = output.contiguous();
  at::Tensor dy = grad.contiguous();
  at::Tensor dx = at::empty_like(y);
  if (y.numel() == 0) return dx;
  FA_DISPATCH_FLOATING(y.scalar_type(), "fastact.softmax", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const int64_t rows = y.size(0), C = y.size(1);
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    const Stream stream = current_stream();
    const RowPlan plan = row_plan(RowSplit::kToFill, rows, C, sizeof(scalar_t));
    at::Tensor keep;
    A* part = row_partials<A>(plan, rows, y, keep);
    const bool vec = same_alignment(yp, dyp, dxp);
    if (part) {
      if (vec) {
        FA_LAUNCH(plan.grid, kThreads, 0, stream, softmax_backward_partial_kernel<kVec, scalar_t>)(
            dyp, yp, rows, C, plan.span, log, part);
      } else {
        FA_LAUNCH(plan.grid, kThreads, 0, stream, softmax_backward_partial_kernel<1, scalar_t>)(
            dyp, yp, rows, C, plan.span, log, part);
      }
    }
    with_row_team(plan.lanes, [&](auto team) {
      using Team = decltype(team);
      if (vec) {
        FA_LAUNCH(plan.grid, kThreads, 0, stream, softmax_backward_kernel<kVec, Team, scalar_t>)(
            team, dyp, yp, dxp, rows, C, plan.span, part, log);
      } else {
        FA_LAUNCH(plan.grid, kThreads, 0, stream, softmax_backward_kernel<1, Team, scalar_t>)(
            team, dyp, yp, dxp, rows, C, plan.span, part, log);
      }
    });
  });
  return dx;
}

}  // namespace
}  // namespace fastact

#if defined(FASTACT_CUDA_EMULATION)
// The row kernels' plan for any shape, for the emulation lane's tests
// (fastact._emulation.row_plan), which also check it against the launches:
// out = {lanes, span, splits, grid.x, grid.y}.
extern "C" void fastact_emu_row_plan(int elementwise, int64_t rows, int64_t C, int elem_size, int64_t* out) {
  const ::fastact::RowPlan p =
      ::fastact::row_plan(elementwise ? ::fastact::RowSplit::kAlways : ::fastact::RowSplit::kToFill, rows, C, elem_size);
  out[0] = p.lanes, out[1] = p.span, out[2] = p.splits, out[3] = p.grid.x, out[4] = p.grid.y;
}
#endif

TORCH_LIBRARY_IMPL(fastact, FA_DEVICE_KEY, m) {
  m.impl("softmax_rows", &::fastact::softmax_rows_cuda);
  m.impl("softmax_rows_backward", &::fastact::softmax_rows_backward_cuda);
}
