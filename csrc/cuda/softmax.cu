// CUDA kernels of softmax / log_softmax over rows [R, C]: one block per row,
// an online (max, sum) per thread merged across the block, then one write.
#include <ATen/OpMathType.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fastact/checks.h"
#include "cuda/block_reduce.cuh"
#include "fastact/dispatch.h"

namespace fastact {
namespace {

constexpr int kThreads = kRowThreads;

template <class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads) softmax_kernel(const S* x, S* y, int64_t C, bool log) {
  const S* xr = x + blockIdx.x * C;
  S* yr = y + blockIdx.x * C;
  OnlineLse<A> part;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) part.add(static_cast<A>(xr[c]));
  const A lse = block_lse(part).value();
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const A v = static_cast<A>(xr[c]) - lse;
    yr[c] = static_cast<S>(log ? v : ::fastact::math::exp(v));
  }
}

template <class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    softmax_backward_kernel(const S* dy, const S* y, S* dx, int64_t C, bool log) {
  const int64_t off = blockIdx.x * C;
  A part = 0;
  for (int64_t c = threadIdx.x; c < C; c += kThreads)
    part += log ? static_cast<A>(dy[off + c]) : static_cast<A>(dy[off + c]) * static_cast<A>(y[off + c]);
  const A s = block_sum(part);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const A yc = static_cast<A>(y[off + c]), g = static_cast<A>(dy[off + c]);
    dx[off + c] = static_cast<S>(log ? g - ::fastact::math::exp(yc) * s : yc * (g - s));
  }
}

at::Tensor softmax_rows_cuda(const at::Tensor& input, bool log) {
  const char* op = log ? "fastact.log_softmax" : "fastact.softmax";
  check_float(input, op);
  TORCH_CHECK_VALUE(input.dim() == 2, op, ": expected [rows, classes], got ", input.sizes());
  const c10::OptionalDeviceGuard guard(input.device());
  at::Tensor x = input.contiguous();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.softmax", [&] {
    softmax_kernel<scalar_t><<<x.size(0), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), x.size(1), log);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor softmax_rows_backward_cuda(const at::Tensor& grad, const at::Tensor& output, bool log) {
  const char* op = log ? "fastact.log_softmax" : "fastact.softmax";
  check_float(output, op, "output");
  check_like(grad, output, op, "grad_output", "output");
  const c10::OptionalDeviceGuard guard(output.device());
  at::Tensor y = output.contiguous();
  at::Tensor dy = grad.contiguous();
  at::Tensor dx = at::empty_like(y);
  if (y.numel() == 0) return dx;
  FA_DISPATCH_FLOATING(y.scalar_type(), "fastact.softmax", [&] {
    softmax_backward_kernel<scalar_t><<<y.size(0), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        dy.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
        y.size(1), log);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, CUDA, m) {
  m.impl("softmax_rows", &::fastact::softmax_rows_cuda);
  m.impl("softmax_rows_backward", &::fastact::softmax_rows_backward_cuda);
}
