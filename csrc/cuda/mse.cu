// CUDA kernels of mse_loss's elementwise part.
#include <torch/library.h>

#include "cuda/launcher.cuh"
#include "fastact/mse_ops.h"

TORCH_LIBRARY_IMPL(fastact, CUDA, m) { FA_REGISTER_MSE_OPS(::fastact::CudaLauncher) }
