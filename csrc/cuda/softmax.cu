// CUDA kernels of softmax / log_softmax over rows [R, C]: one block per row,
// an online (max, sum) per thread merged across the block, then one write;
// 128-bit loads and stores (for_each_in_span).
#include <ATen/OpMathType.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "fastact/checks.h"
#include "cuda/block_reduce.cuh"
#include "fastact/dispatch.h"

namespace fastact {
namespace {

constexpr int kThreads = kRowThreads;

template <int VEC, class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads) softmax_kernel(const S* x, S* y, int64_t C, bool log) {
  const S* xr = x + blockIdx.x * C;
  S* yr = y + blockIdx.x * C;
  OnlineLse<A> part;  // NaN-faithful: a NaN value makes the lse NaN
  for_each_in_span<VEC>(xr, 0, C, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<S, N> xv = load_vec<N>(xr + c);
#pragma unroll
    for (int j = 0; j < N; ++j) part.add(static_cast<A>(xv.v[j]));
  });
  const A lse = block_lse(part).value();
  for_each_in_span<VEC>(xr, 0, C, [&](int64_t c, auto width) {
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
    softmax_backward_kernel(const S* dy, const S* y, S* dx, int64_t C, bool log) {
  const int64_t off = blockIdx.x * C;
  const S* dyr = dy + off;
  const S* yr = y + off;
  A part = 0;
  for_each_in_span<VEC>(yr, 0, C, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<S, N> gv = load_vec<N>(dyr + c);
    const VecOf<S, N> yv = load_vec<N>(yr + c);
#pragma unroll
    for (int j = 0; j < N; ++j)
      part += log ? static_cast<A>(gv.v[j]) : static_cast<A>(gv.v[j]) * static_cast<A>(yv.v[j]);
  });
  const A s = block_sum(part);
  for_each_in_span<VEC>(yr, 0, C, [&](int64_t c, auto width) {
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
    constexpr int kVec = 16 / sizeof(scalar_t);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const Stream stream = current_stream();
    if (same_alignment(xp, yp)) {
      FA_LAUNCH(x.size(0), kThreads, 0, stream, softmax_kernel<kVec, scalar_t>)(xp, yp, x.size(1), log);
    } else {
      FA_LAUNCH(x.size(0), kThreads, 0, stream, softmax_kernel<1, scalar_t>)(xp, yp, x.size(1), log);
    }
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
    constexpr int kVec = 16 / sizeof(scalar_t);
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    const Stream stream = current_stream();
    if (same_alignment(yp, dyp, dxp)) {
      FA_LAUNCH(y.size(0), kThreads, 0, stream, softmax_backward_kernel<kVec, scalar_t>)(dyp, yp, dxp, y.size(1), log);
    } else {
      FA_LAUNCH(y.size(0), kThreads, 0, stream, softmax_backward_kernel<1, scalar_t>)(dyp, yp, dxp, y.size(1), log);
    }
  });
  return dx;
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, FA_DEVICE_KEY, m) {
  m.impl("softmax_rows", &::fastact::softmax_rows_cuda);
  m.impl("softmax_rows_backward", &::fastact::softmax_rows_backward_cuda);
}
