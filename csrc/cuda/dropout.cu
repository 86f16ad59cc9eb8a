// CUDA kernels of the dropout family, and the CUDA generator's (seed, offset).
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <mutex>

#include "cuda/launcher.cuh"
#include "fastact/dropout_ops.h"

namespace fastact {
namespace {

__global__ void unpack_philox_kernel(at::PhiloxCudaState state, int64_t* out) {
  const auto seeds = at::cuda::philox::unpack(state);
  out[0] = static_cast<int64_t>(std::get<0>(seeds));
  out[1] = static_cast<int64_t>(std::get<1>(seeds));
}

// (seed, offset) of the CUDA generator, advanced for this call, written by a
// one-thread kernel from the graph-safe Philox state: under CUDA graph
// capture each replay reads the generator's current offset. The offset is
// the high half of every Philox counter, so streams of successive calls never
// overlap whatever their size; 4 is the generator's required step.
at::Tensor philox_seed_cuda(const at::Tensor& like, std::optional<at::Generator> generator) {
  const c10::OptionalDeviceGuard guard(like.device());
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(like.device().index()));
  at::PhiloxCudaState state;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    state = gen->philox_cuda_state(4);
  }
  at::Tensor out = at::empty({2}, like.options().dtype(at::kLong));
  unpack_philox_kernel<<<1, 1, 0, c10::cuda::getCurrentCUDAStream()>>>(state,
                                                                       out.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, CUDA, m) {
  FA_REGISTER_DROPOUT_OPS(::fastact::CudaLauncher)
  m.impl("_philox_seed", &::fastact::philox_seed_cuda);
}
