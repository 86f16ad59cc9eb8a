// CPU kernels of mse_loss's elementwise part.
#include <torch/library.h>

#include "cpu/launcher.h"
#include "fastact/mse_ops.h"

TORCH_LIBRARY_IMPL(fastact, CPU, m) { FA_REGISTER_MSE_OPS(::fastact::CpuLauncher) }
