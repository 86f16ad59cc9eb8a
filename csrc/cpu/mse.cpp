// CPU kernels of mse_loss: the elementwise ops on the shared launcher, and
// the fused sum of squared differences (blocks summed in opmath with SIMD,
// block sums in double; at::parallel_reduce combines the threads' partial
// sums in a fixed order, so the result does not vary from run to run).
#include <ATen/Parallel.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>

#include "cpu/launcher.h"
#include "fastact/mse_ops.h"

namespace fastact {
namespace {

template <class S, class A = at::opmath_type<S>>
FA_CPU_CLONES double squared_difference_span_blocks(const S* x, const S* t, int64_t n) {
  constexpr int64_t kBlock = 1024;
  constexpr bool kNarrow = half_convert::is_narrow<S>;
  // bfloat16/float16 blocks widened to float first (the vector conversions)
  alignas(64) float xb[kNarrow ? kBlock : 1], tb[kNarrow ? kBlock : 1];
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    A part = 0;
    if constexpr (kNarrow) {
      half_convert::widen_n(x + b, xb, e - b);
      half_convert::widen_n(t + b, tb, e - b);
#pragma omp simd reduction(+ : part)
      for (int64_t i = 0; i < e - b; ++i) {
        const A d = xb[i] - tb[i];
        part += d * d;
      }
    } else {
#pragma omp simd reduction(+ : part)
      for (int64_t i = b; i < e; ++i) {
        const A d = static_cast<A>(x[i]) - static_cast<A>(t[i]);
        part += d * d;
      }
    }
    total += part;
  }
  return total;
}

// bfloat16/float16 with the conversions in registers where the CPU has the
// instruction sets of half_segment.h, else the block form above
template <class S>
double squared_difference_span(const S* x, const S* t, int64_t n) {
#if FA_HALF_SEGMENTS
  if constexpr (half_convert::is_narrow<S>) {
    switch (half_convert::simd_level()) {
      case 2: return half_simd::avx512::squared_difference_sum(x, t, n);
      case 1: return half_simd::avx2::squared_difference_sum(x, t, n);
      default: break;
    }
  }
#endif
  return squared_difference_span_blocks(x, t, n);
}

at::Tensor squared_difference_sum_cpu(const at::Tensor& input, const at::Tensor& target) {
  auto [x, t] = mse_operands(input, target);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  double total = 0.0;
  FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.mse_loss", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    total = at::parallel_reduce(
        0, x.numel(), 1 << 16, 0.0,
        [&](int64_t b, int64_t e, double init) { return init + squared_difference_span(xp + b, tp + b, e - b); },
        std::plus<double>());
  });
  return at::full({}, total, x.options().dtype(acc));
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, CPU, m) {
  FA_REGISTER_MSE_OPS(::fastact::CpuLauncher)
  m.impl("squared_difference_sum", &::fastact::squared_difference_sum_cpu);
}
