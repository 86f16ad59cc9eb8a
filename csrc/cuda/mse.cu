// CUDA kernels of mse_loss: the elementwise ops on the shared launcher, and
// the fused sum of squared differences in two deterministic passes (no
// atomics): blocks sum contiguous spans with 128-bit loads into per-block
// partials, then one block adds the partials in a fixed order.
#include <torch/library.h>

#include <ATen/ops/empty.h>

#include <algorithm>

#include "cuda/block_reduce.cuh"
#include "cuda/launcher.cuh"
#include "fastact/mse_ops.h"

namespace fastact {
namespace {

constexpr int kThreads = kRowThreads;
constexpr int kMaxBlocks = 1024;

template <int VEC, class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    sqdiff_partial_kernel(const S* x, const S* t, int64_t n, int64_t span, A* partial) {
  const int64_t lo = blockIdx.x * span, hi = lo + span < n ? lo + span : n;
  A part = 0;
  for_each_in_span<VEC>(x, lo, hi, [&](int64_t i, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<S, N> xv = load_vec<N>(x + i);
    const VecOf<S, N> tv = load_vec<N>(t + i);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const A d = static_cast<A>(xv.v[j]) - static_cast<A>(tv.v[j]);
      part += d * d;
    }
  });
  const A total = block_sum(part);
  if (threadIdx.x == 0) gstore(partial + blockIdx.x, total);
}

template <class A>
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const A* partial, int count, A* out) {
  A part = 0;
  for (int i = threadIdx.x; i < count; i += kThreads) part += gload(partial + i);
  const A total = block_sum(part);
  if (threadIdx.x == 0) gstore(out, total);
}

at::Tensor squared_difference_sum_cuda(const at::Tensor& input, const at::Tensor& target) {
  const DeviceGuard guard(input.device());
  auto [x, t] = mse_operands(input, target);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({}, x.options().dtype(acc));
  const int64_t n = x.numel();
  FA_DISPATCH_FLOATING(x.scalar_type(), "fastact.mse_loss", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    // spans of at least 4 vector steps per thread, at most kMaxBlocks of them
    const int64_t min_span = int64_t{kThreads} * kVec * 4;
    const int64_t blocks = std::clamp<int64_t>((n + min_span - 1) / min_span, 1, kMaxBlocks);
    int64_t span = (n + blocks - 1) / blocks;
    span = std::max<int64_t>(kVec, (span + kVec - 1) / kVec * kVec);
    at::Tensor partial = at::empty({blocks}, x.options().dtype(acc));
    const Stream stream = current_stream();
    if (same_alignment(xp, tp)) {
      FA_LAUNCH(blocks, kThreads, 0, stream, sqdiff_partial_kernel<kVec, scalar_t>)(
          xp, tp, n, span, partial.mutable_data_ptr<A>());
    } else {
      FA_LAUNCH(blocks, kThreads, 0, stream, sqdiff_partial_kernel<1, scalar_t>)(
          xp, tp, n, span, partial.mutable_data_ptr<A>());
    }
    FA_LAUNCH(1, kThreads, 0, stream, sum_partials_kernel<A>)(partial.const_data_ptr<A>(), static_cast<int>(blocks),
                                                              out.mutable_data_ptr<A>());
  });
  return out;
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, FA_DEVICE_KEY, m) {
  FA_REGISTER_MSE_OPS(::fastact::CudaLauncher)
  m.impl("squared_difference_sum", &::fastact::squared_difference_sum_cuda);
}
