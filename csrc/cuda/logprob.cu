// CUDA kernels of the log-probability rows (see logprob_ops.h).
//
// Forward: a block per row reads the row once (128-bit loads where every
// row is aligned), each thread folding its values into an online (max, sum
// of exp, sum of exp * z) triple (one rescale per vector); the block merges
// the (max, sum) pairs (block_lse), moves each thread's exp * z sum to the
// row max and adds them (block_sum). Backward: an elementwise pass over (row, span of the row) with
// the row's coefficients read once per block; the gradient may overwrite the
// logits (the in-place op). Everything stays on the device: an out-of-range
// target trips a device-side assert (as in PyTorch).
#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <tuple>

#include "cuda/block_reduce.cuh"
#include "cuda/launcher.cuh"
#include "fastact/logprob_ops.h"

namespace fastact {
namespace {

constexpr int kLogprobThreads = kRowThreads;

template <bool kEntropy, int VEC, class A>
__global__ void __launch_bounds__(kLogprobThreads)
    logprob_forward_kernel(const A* x, const int64_t* target, LogprobParams p, double* lse_out, A* logp_out,
                           A* entropy_out) {
  const int64_t r = blockIdx.x, C = p.classes;
  const A* xr = x + r * C;
  const A T = static_cast<A>(p.temperature);
  OnlineEntropy<A> acc;
  for_each_in_span<VEC>(xr, 0, C, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<A, N> xv = load_vec<N>(xr + c);
    A z[N];
#pragma unroll
    for (int j = 0; j < N; ++j) z[j] = xv.v[j] / T;
    acc.template add_all<kEntropy>(z);
  });
  const OnlineLse<A> row = block_lse(OnlineLse<A>{acc.m, acc.s});
  A u = 0;
  if (kEntropy) {
    if (row.m > acc.m) acc.rescale(row.m);
    u = block_sum(acc.u);
  }
  if (threadIdx.x != 0) return;
  const int64_t t = gload(target + r);
  const bool counted = t != p.ignore_index;
  FA_DEVICE_ASSERT(!counted || (t >= 0 && t < C), "fastact.logprob_rows: target out of bounds");
  const LogprobRow<A> out = logprob_finish<A>(row.m, row.s, u, counted ? gload(xr + t) / T : A(0), counted);
  gstore(lse_out + r, out.lse);
  gstore(logp_out + r, out.logp);
  if (kEntropy) gstore(entropy_out + r, out.entropy);
}

// grid (rows, spans); dx may be x itself. Per element
//   dz_c = (p_c (a - b (log p_c + H)) + [c == t] g_l) / T,  log p_c = (z_c / T - hi) - lo
// (hi + lo: the float64 lse, split_lse: exact under a shift of the row).
template <bool kEntropy, int VEC, class A>
__global__ void __launch_bounds__(kLogprobThreads)
    logprob_backward_kernel(const A* x, const int64_t* target, LogprobParams p, int64_t span, const double* lse,
                            const A* entropy, const A* g_lse, const A* g_logp, const A* g_entropy, A* dx) {
  const int64_t r = blockIdx.x, C = p.classes;
  const int64_t lo = blockIdx.y * span, hi = lo + span < C ? lo + span : C;
  const A* xr = x + r * C;
  A* dr = dx + r * C;
  const int64_t t = gload(target + r);
  FA_DEVICE_ASSERT(t == p.ignore_index || (t >= 0 && t < C), "fastact.logprob_rows_backward: target out of bounds");
  const A gl = t != p.ignore_index ? gload(g_logp + r) : A(0);  // (log p = 0 there)
  const LogprobGrad<A> g{gload(g_lse + r) - gl, gload(g_entropy + r), gl, kEntropy ? gload(entropy + r) : A(0)};
  if (g.zero()) {  // (ignored rows)
    for_each_in_span<VEC>(xr, lo, hi, [&](int64_t c, auto width) {
      constexpr int N = decltype(width)::value;
      VecOf<A, N> zero;
#pragma unroll
      for (int j = 0; j < N; ++j) zero.v[j] = A(0);
      store_vec<N>(dr + c, zero);
    });
    return;
  }
  const A T = static_cast<A>(p.temperature);
  const int64_t tt = t == p.ignore_index ? -1 : t;
  const LseSplit<A> l = split_lse<A>(gload(lse + r));
  for_each_in_span<VEC>(xr, lo, hi, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    const VecOf<A, N> xv = load_vec<N>(xr + c);
    VecOf<A, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const A d = (xv.v[j] / T - l.hi) - l.lo;
      const A e = ::fastact::math::exp(d);
      // without the entropy term, e * a is 0 for e = 0 already
      A dz = kEntropy ? g.dz(e, d) : e * g.a;
      if (c + j == tt) dz += g.g_l;
      out.v[j] = dz / T;
    }
    store_vec<N>(dr + c, out);
  });
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> logprob_rows_cuda(const at::Tensor& logits, const at::Tensor& target,
                                                                 double temperature, int64_t ignore_index,
                                                                 bool entropy) {
  const DeviceGuard guard(logits.device());
  const LogprobArgs a = logprob_args(logits, target, temperature, ignore_index, entropy, "fastact.logprob_rows");
  const LogprobParams& p = a.p;
  const auto opts = a.logits.options();
  at::Tensor lse = at::empty({p.rows}, opts.dtype(at::kDouble));
  at::Tensor logp = at::empty({p.rows}, opts);
  at::Tensor ent = at::empty({p.entropy ? p.rows : 0}, opts);
  if (p.rows == 0) return {lse, logp, ent};
  AT_DISPATCH_FLOATING_TYPES(a.logits.scalar_type(), "fastact.logprob_rows", [&] {
    using A = scalar_t;
    constexpr int kVec = 16 / sizeof(A);
    const A* x = a.logits.const_data_ptr<A>();
    const int64_t* tgt = a.target.const_data_ptr<int64_t>();
    double* lse_ptr = lse.mutable_data_ptr<double>();
    A* logp_ptr = logp.mutable_data_ptr<A>();
    A* ent_ptr = p.entropy ? ent.mutable_data_ptr<A>() : nullptr;
    const Stream stream = current_stream();
    // Vector steps only when every row starts 16-byte aligned: the columns a
    // thread sums then depend on the column index alone, not on where the
    // row sits (for_each_in_span's scalar head follows the address), so a
    // row's result does not depend on its place in the chunk.
    const bool vec = p.classes % kVec == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    auto launch = [&](auto with_entropy, auto width) {
      FA_LAUNCH(p.rows, kLogprobThreads, 0, stream,
                logprob_forward_kernel<decltype(with_entropy)::value, decltype(width)::value, A>)(
          x, tgt, p, lse_ptr, logp_ptr, ent_ptr);
    };
    using Vec = std::integral_constant<int, kVec>;
    using One = std::integral_constant<int, 1>;
    if (p.entropy) {
      vec ? launch(std::true_type{}, Vec{}) : launch(std::true_type{}, One{});
    } else {
      vec ? launch(std::false_type{}, Vec{}) : launch(std::false_type{}, One{});
    }
  });
  return {lse, logp, ent};
}

void backward_into(const LogprobArgs& a, const at::Tensor& lse, const std::optional<at::Tensor>& entropy,
                   const std::optional<at::Tensor>& grad_lse, const std::optional<at::Tensor>& grad_logp,
                   const std::optional<at::Tensor>& grad_entropy, const at::Tensor& out) {
  const LogprobParams& p = a.p;
  if (p.rows == 0 || p.classes == 0) return;
  const auto acc = a.logits.scalar_type();
  // absent gradients are 0 (a row-sized vector: cheap next to the logits)
  auto rows_of = [&](const std::optional<at::Tensor>& t) {
    return t && t->defined() ? t->to(acc).contiguous() : at::zeros({p.rows}, a.logits.options());
  };
  const at::Tensor gs = rows_of(grad_lse), gl = rows_of(grad_logp), gh = rows_of(grad_entropy);
  const bool with_entropy = grad_entropy && grad_entropy->defined();
  const at::Tensor H = with_entropy ? entropy->to(acc).contiguous() : gh;
  const at::Tensor ls = lse.to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(a.logits.scalar_type(), "fastact.logprob_rows_backward", [&] {
    using A = scalar_t;
    constexpr int kVec = 16 / sizeof(A);
    const A* x = a.logits.const_data_ptr<A>();
    A* dx = out.mutable_data_ptr<A>();
    // a block writes up to 4 vectors per thread of one row
    int64_t span = std::max<int64_t>(int64_t{kLogprobThreads} * kVec * 4, ceil_div(p.classes, 65535));
    span = ceil_div(span, kVec) * kVec;
    const Dim grid(p.rows, ceil_div(p.classes, span));
    const Stream stream = current_stream();
    const bool vec = same_alignment(x, dx);
    auto launch = [&](auto with_entropy, auto width) {
      FA_LAUNCH(grid, kLogprobThreads, 0, stream,
                logprob_backward_kernel<decltype(with_entropy)::value, decltype(width)::value, A>)(
          x, a.target.const_data_ptr<int64_t>(), p, span, ls.const_data_ptr<double>(), H.const_data_ptr<A>(),
          gs.const_data_ptr<A>(), gl.const_data_ptr<A>(), gh.const_data_ptr<A>(), dx);
    };
    using Vec = std::integral_constant<int, kVec>;
    using One = std::integral_constant<int, 1>;
    if (with_entropy) {
      vec ? launch(std::true_type{}, Vec{}) : launch(std::true_type{}, One{});
    } else {
      vec ? launch(std::false_type{}, Vec{}) : launch(std::false_type{}, One{});
    }
  });
}

at::Tensor logprob_rows_backward_cuda(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                                      const std::optional<at::Tensor>& entropy,
                                      const std::optional<at::Tensor>& grad_lse,
                                      const std::optional<at::Tensor>& grad_logp,
                                      const std::optional<at::Tensor>& grad_entropy, double temperature,
                                      int64_t ignore_index) {
  constexpr const char* op = "fastact.logprob_rows_backward";
  const DeviceGuard guard(logits.device());
  const LogprobArgs a = logprob_args(logits, target, temperature, ignore_index, false, op);
  check_logprob_rows(a, lse, entropy, grad_lse, grad_logp, grad_entropy, op);
  at::Tensor dx = at::empty_like(a.logits);
  backward_into(a, lse, entropy, grad_lse, grad_logp, grad_entropy, dx);
  return dx;
}

void logprob_rows_backward_inplace_cuda(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                                        const std::optional<at::Tensor>& entropy,
                                        const std::optional<at::Tensor>& grad_lse,
                                        const std::optional<at::Tensor>& grad_logp,
                                        const std::optional<at::Tensor>& grad_entropy, double temperature,
                                        int64_t ignore_index) {
  constexpr const char* op = "fastact.logprob_rows_backward_";
  const DeviceGuard guard(logits.device());
  TORCH_CHECK_VALUE(logits.is_contiguous(), op, ": logits must be contiguous to be overwritten with their gradient");
  const LogprobArgs a = logprob_args(logits, target, temperature, ignore_index, false, op);
  check_logprob_rows(a, lse, entropy, grad_lse, grad_logp, grad_entropy, op);
  backward_into(a, lse, entropy, grad_lse, grad_logp, grad_entropy, logits);
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, FA_DEVICE_KEY, m) {
  m.impl("logprob_rows", &::fastact::logprob_rows_cuda);
  m.impl("logprob_rows_backward", &::fastact::logprob_rows_backward_cuda);
  m.impl("logprob_rows_backward_", &::fastact::logprob_rows_backward_inplace_cuda);
}
