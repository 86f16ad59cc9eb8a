// CUDA kernels of the first half of the activation list (the list is cut in
// two only so the two files compile in parallel).
#include <torch/library.h>

#include "cuda/launcher.cuh"
#include "fastact/activation_ops.h"

#define FA_LAUNCHER ::fastact::CudaLauncher
TORCH_LIBRARY_IMPL(fastact, FA_DEVICE_KEY, m) {
  FASTACT_ACTIVATIONS_A(FA_REGISTER_ACTIVATION)
}
