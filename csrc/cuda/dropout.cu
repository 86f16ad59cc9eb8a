// CUDA kernels of the dropout family, and the CUDA generator's (seed, offset).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cuda/launcher.cuh"
#include "fastact/dropout_ops.h"

namespace fastact {
namespace {

__global__ void unpack_philox_kernel(PhiloxState state, int64_t* out) {
  const auto seeds = philox_unpack(state);
  gstore(out, static_cast<int64_t>(std::get<0>(seeds)));
  gstore(out + 1, static_cast<int64_t>(std::get<1>(seeds)));
}

// (seed, offset) of the CUDA generator, advanced for this call, written by a
// one-thread kernel from the graph-safe Philox state: under CUDA graph
// capture each replay reads the generator's current offset. The offset is
// the high half of every Philox counter, so streams of successive calls never
// overlap whatever their size.
at::Tensor philox_seed_cuda(const at::Tensor& like, std::optional<at::Generator> generator) {
  const DeviceGuard guard(like.device());
  const PhiloxState state = philox_state(like, generator);
  at::Tensor out = at::empty({2}, like.options().dtype(at::kLong));
  FA_LAUNCH(1, 1, 0, current_stream(), unpack_philox_kernel)(state, out.mutable_data_ptr<int64_t>());
  return out;
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, FA_DEVICE_KEY, m) {
  FA_REGISTER_DROPOUT_OPS(::fastact::CudaLauncher)
  m.impl("_philox_seed", &::fastact::philox_seed_cuda);
}
