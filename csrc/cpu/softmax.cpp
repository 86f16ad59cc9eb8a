// CPU kernels of softmax / log_softmax over rows [R, C] (the dim made last
// by the Python layer): per row a max pass, a blocked sum of exponentials
// (double across blocks), then one write. Backward from the saved output:
//   softmax:     dx = y * (dy - sum(dy * y))
//   log_softmax: dx = dy - exp(y) * sum(dy)
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "cpu/half_convert.h"
#include "fastact/alloc.h"
#include "fastact/checks.h"
#include "fastact/dispatch.h"
#include "fastact/math.h"

namespace fastact {
namespace {

template <class S, class A = at::opmath_type<S>>
FA_CPU_CLONES void softmax_row(const S* x, S* y, int64_t C, bool log) {
  A m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t c = 0; c < C; ++c) m = static_cast<A>(x[c]) > m ? static_cast<A>(x[c]) : m;
  const A mm = m == -INFINITY ? A(0) : m;
  double s = 0.0;
  constexpr int64_t kBlock = 512;
  for (int64_t b = 0; b < C; b += kBlock) {
    const int64_t e = std::min(C, b + kBlock);
    A bs = 0;
#pragma omp simd reduction(+ : bs)
    for (int64_t c = b; c < e; ++c) bs += ::fastact::math::exp_nonpositive(static_cast<A>(x[c]) - mm);
    s += bs;
  }
  const A lse = m == -INFINITY ? A(-INFINITY) : m + static_cast<A>(std::log(s));
  if (log) {
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) y[c] = static_cast<S>(static_cast<A>(x[c]) - lse);
  } else {
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) y[c] = static_cast<S>(::fastact::math::exp(static_cast<A>(x[c]) - lse));
  }
}

template <class S, class A = at::opmath_type<S>>
FA_CPU_CLONES void softmax_row_backward(const S* dy, const S* y, S* dx, int64_t C, bool log) {
  A s = 0;
  if (log) {
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; ++c) s += static_cast<A>(dy[c]);
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c)
      dx[c] = static_cast<S>(static_cast<A>(dy[c]) - ::fastact::math::exp(static_cast<A>(y[c])) * s);
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; ++c) s += static_cast<A>(dy[c]) * static_cast<A>(y[c]);
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c)
      dx[c] = static_cast<S>(static_cast<A>(y[c]) * (static_cast<A>(dy[c]) - s));
  }
}

at::Tensor softmax_rows_cpu(const at::Tensor& input, bool log) {
  const char* op = log ? "fastact.log_softmax" : "fastact.softmax";
  check_float(input, op);
  TORCH_CHECK_VALUE(input.dim() == 2, op, ": expected [rows, classes], got ", input.sizes());
  at::Tensor x = input.contiguous();
  at::Tensor y = new_like(x);
  const int64_t C = x.size(1);
  FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.softmax", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.size(0), 1, [&](int64_t b, int64_t e) {
      // bfloat16/float16 rows widened to float once (the kernel reads each
      // element up to three times), the result written over the buffer
      half_convert::WideRow<scalar_t> row;
      for (int64_t r = b; r < e; ++r) {
        const auto* xr = row.load(xp + r * C, C);
        softmax_row(xr, row.out(yp + r * C, C), C, log);
        row.store(yp + r * C, C);
      }
    });
  });
  return y;
}

at::Tensor softmax_rows_backward_cpu(const at::Tensor& grad, const at::Tensor& output, bool log) {
  const char* op = log ? "fastact.log_softmax" : "fastact.softmax";
  check_float(output, op, "output");
  check_like(grad, output, op, "grad_output", "output");
  at::Tensor y = output.contiguous();
  at::Tensor dy = grad.contiguous();
  at::Tensor dx = new_like(y);
  const int64_t C = y.size(1);
  FA_DISPATCH_FLOATING(y.scalar_type(), "fastact.softmax", [&] {
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, y.size(0), 1, [&](int64_t b, int64_t e) {
      half_convert::WideRow<scalar_t> dy_row, y_row;
      for (int64_t r = b; r < e; ++r) {
        const auto* dyr = dy_row.load(dyp + r * C, C);
        const auto* yr = y_row.load(yp + r * C, C);
        // (dx over dy's buffer: each element is read before it is written)
        softmax_row_backward(dyr, yr, dy_row.out(dxp + r * C, C), C, log);
        dy_row.store(dxp + r * C, C);
      }
    });
  });
  return dx;
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, CPU, m) {
  m.impl("softmax_rows", &::fastact::softmax_rows_cpu);
  m.impl("softmax_rows_backward", &::fastact::softmax_rows_backward_cpu);
}
