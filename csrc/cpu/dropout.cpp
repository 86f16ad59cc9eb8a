// CPU kernels of the dropout family, and the CPU generator's (seed, offset).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <mutex>

#include "cpu/launcher.h"
#include "fastact/dropout_ops.h"

namespace fastact {
namespace {

// A fresh Philox stream for one dropout call on CPU: the seed is a 64-bit
// draw of the CPU generator (the default one, or `generator`), so
// torch.manual_seed makes dropout reproducible; the offset is 0.
at::Tensor philox_seed_cpu(const at::Tensor& like, std::optional<at::Generator> generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  uint64_t seed;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    seed = gen->random64();
  }
  at::Tensor out = at::empty({2}, like.options().dtype(at::kLong));
  out.mutable_data_ptr<int64_t>()[0] = static_cast<int64_t>(seed);
  out.mutable_data_ptr<int64_t>()[1] = 0;
  return out;
}

}  // namespace
}  // namespace fastact

TORCH_LIBRARY_IMPL(fastact, CPU, m) {
  FA_REGISTER_DROPOUT_OPS(::fastact::CpuLauncher)
  m.impl("_philox_seed", &::fastact::philox_seed_cpu);
}
