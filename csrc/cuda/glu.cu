// CUDA kernels of the GLU family.
#include <torch/library.h>

#include "cuda/launcher.cuh"
#include "fastact/glu_ops.h"

#define FA_LAUNCHER ::fastact::CudaLauncher
TORCH_LIBRARY_IMPL(fastact, FA_DEVICE_KEY, m) { FA_REGISTER_GLU_FAMILY }
