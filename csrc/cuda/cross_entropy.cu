// CUDA kernels of the cross-entropy rows (see cross_entropy_ops.h): one block
// per row; each thread folds its share of the classes into an online
// (max, sum) pair and the row's sums, then the block merges them. The class
// weight sum is computed on the device (no host sync). An out-of-range target
// trips a device-side assert, as in PyTorch.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <ATen/OpMathType.h>
#include <ATen/ops/sum.h>

#include "cuda/block_reduce.cuh"
#include "fastact/cross_entropy_ops.h"

namespace fastact {
namespace {

constexpr int kThreads = kRowThreads;

template <class A>
struct RowPartial {
  OnlineLse<A> lse;
  A wz, wy;
};

template <class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    ce_forward_kernel(const S* x, const S* y, const int64_t* target, const A* w,
                      const A* weight_sum, CrossEntropyParams p, A* loss, A* lse_out) {
  const int64_t r = blockIdx.x;
  const int64_t C = p.classes;
  const S* xr = x + r * C;
  const S* yr = y ? y + r * C : nullptr;
  const A keep = A(1) - A(p.smoothing), spread = A(p.smoothing) / static_cast<A>(C);
  const A cap = p.softcap;
  RowPartial<A> part{OnlineLse<A>{}, A(0), A(0)};
  bool nan = false;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const A z = ce_cap(static_cast<A>(xr[c]), cap);
    nan |= z != z;
    part.lse.add(z);
    const A wc = w ? w[c] : A(1);
    if (yr) {
      const A yc = keep * static_cast<A>(yr[c]) + spread;
      part.wy += wc * yc;
      part.wz += wc * yc * z;
    } else {
      part.wz += wc * z;
    }
  }
  nan = __syncthreads_or(nan);
  const RowPartial<A> row{block_lse(part.lse), block_sum(part.wz), yr ? block_sum(part.wy) : A(0)};
  if (threadIdx.x != 0) return;
  const A lse = nan ? A(NAN) : row.lse.value();
  lse_out[r] = lse;
  A l;
  if (yr) {
    l = row.wy * lse - row.wz;
  } else {
    const int64_t t = target[r];
    if (t == p.ignore_index) {
      loss[r] = A(0);
      return;
    }
    CUDA_KERNEL_ASSERT(t >= 0 && t < C && "fastact.cross_entropy: target out of bounds");
    const A z_t = ce_cap(static_cast<A>(xr[t]), cap);
    const A w_t = w ? w[t] : A(1);
    const A W = weight_sum ? *weight_sum : static_cast<A>(C);
    l = keep * w_t * (lse - z_t) + spread * (W * lse - row.wz);
  }
  loss[r] = l + A(p.z_loss) * lse * lse;
}

template <class S, class A = at::opmath_type<S>>
__global__ void __launch_bounds__(kThreads)
    ce_backward_kernel(const A* grad, const S* x, const S* y, const int64_t* target,
                       const A* w, const A* weight_sum, const A* lse,
                       CrossEntropyParams p, S* dx) {
  const int64_t r = blockIdx.x;
  const int64_t C = p.classes;
  const S* xr = x + r * C;
  const S* yr = y ? y + r * C : nullptr;
  S* dr = dx + r * C;
  const A keep = A(1) - A(p.smoothing), spread = A(p.smoothing) / static_cast<A>(C);
  const A cap = p.softcap;
  int64_t t = -1;
  if (!yr) {
    t = target[r];
    if (t == p.ignore_index) {
      for (int64_t c = threadIdx.x; c < C; c += kThreads) dr[c] = S(0);
      return;
    }
    CUDA_KERNEL_ASSERT(t >= 0 && t < C && "fastact.cross_entropy: target out of bounds");
  }
  A sum_wy = 0;
  if (yr) {
    A part = 0;
    for (int64_t c = threadIdx.x; c < C; c += kThreads)
      part += (w ? w[c] : A(1)) * (keep * static_cast<A>(yr[c]) + spread);
    sum_wy = block_sum(part);
  }
  const A g = grad[r], l = lse[r];
  const A wt = (!yr && w) ? w[t] : A(1);
  const A W = weight_sum ? *weight_sum : static_cast<A>(C);
  const A zl = A(2) * A(p.z_loss) * l;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const A z = ce_cap(static_cast<A>(xr[c]), cap);
    const A pc = ::fastact::math::exp(z - l);
    const A wc = w ? w[c] : A(1);
    A dz = yr ? sum_wy * pc - wc * (keep * static_cast<A>(yr[c]) + spread)
              : keep * wt * (pc - (c == t ? A(1) : A(0))) + spread * (W * pc - wc);
    dz = g * (dz + zl * pc);
    const A dcap = cap > A(0) ? A(1) - (z / cap) * (z / cap) : A(1);
    dr[c] = static_cast<S>(dz * dcap);
  }
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_rows_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, double smoothing, double z_loss, double softcap) {
  const c10::OptionalDeviceGuard guard(logits.device());
  CrossEntropyArgs a = cross_entropy_args(logits, target, weight, ignore_index, smoothing, z_loss, softcap);
  const CrossEntropyParams& p = a.p;
  const auto acc = a.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({p.rows}, a.logits.options().dtype(acc));
  at::Tensor lse = at::empty({p.rows}, a.logits.options().dtype(acc));
  const at::Tensor wt = p.has_weight ? a.weight.to(acc) : at::Tensor();
  const at::Tensor W = p.has_weight ? wt.sum() : at::Tensor();  // on the device: no sync
  if (p.rows == 0) return {loss, lse};
  FA_DISPATCH_FLOATING(a.logits.scalar_type(), "fastact.cross_entropy", [&] {
    using A = at::opmath_type<scalar_t>;
    ce_forward_kernel<scalar_t><<<p.rows, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        a.logits.const_data_ptr<scalar_t>(),
        p.prob_target ? a.target.const_data_ptr<scalar_t>() : nullptr,
        p.prob_target ? nullptr : a.target.const_data_ptr<int64_t>(),
        p.has_weight ? wt.const_data_ptr<A>() : nullptr,
        p.has_weight ? W.const_data_ptr<A>() : nullptr, p, loss.mutable_data_ptr<A>(),
        lse.mutable_data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse};
}

at::Tensor cross_entropy_rows_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                            const at::Tensor& target,
                                            const std::optional<at::Tensor>& weight,
                                            const at::Tensor& lse, int64_t ignore_index,
                                            double smoothing, double z_loss, double softcap) {
  const c10::OptionalDeviceGuard guard(logits.device());
  CrossEntropyArgs a = cross_entropy_args(logits, target, weight, ignore_index, smoothing, z_loss, softcap);
  const CrossEntropyParams& p = a.p;
  const auto acc = a.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor g = grad.to(acc).contiguous();
  at::Tensor l = lse.to(acc).contiguous();
  at::Tensor dx = at::empty_like(a.logits);
  const at::Tensor wt = p.has_weight ? a.weight.to(acc) : at::Tensor();
  const at::Tensor W = p.has_weight ? wt.sum() : at::Tensor();
  if (p.rows == 0) return dx;
  FA_DISPATCH_FLOATING(a.logits.scalar_type(), "fastact.cross_entropy", [&] {
    using A = at::opmath_type<scalar_t>;
    ce_backward_kernel<scalar_t><<<p.rows, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<A>(), a.logits.const_data_ptr<scalar_t>(),
        p.prob_target ? a.target.const_data_ptr<scalar_t>() : nullptr,
        p.prob_target ? nullptr : a.target.const_data_ptr<int64_t>(),
        p.has_weight ? wt.const_data_ptr<A>() : nullptr,
        p.has_weight ? W.const_data_ptr<A>() : nullptr, l.const_data_ptr<A>(), p,
        dx.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, CUDA, m) {
  m.impl("cross_entropy_rows", &::fastact::cross_entropy_rows_cuda);
  m.impl("cross_entropy_rows_backward", &::fastact::cross_entropy_rows_backward_cuda);
}
