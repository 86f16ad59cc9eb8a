// CUDA kernels of the second half of the activation list.
#include <torch/library.h>

#include "cuda/launcher.cuh"
#include "fastact/activation_ops.h"
#include "fastact/indexed_ops.h"

#define FA_LAUNCHER ::fastact::CudaLauncher
TORCH_LIBRARY_IMPL(fastact, FA_DEVICE_KEY, m) {
  FASTACT_ACTIVATIONS_B(FA_REGISTER_ACTIVATION)
  FA_REGISTER_INDEXED_OPS(::fastact::CudaLauncher)
}
