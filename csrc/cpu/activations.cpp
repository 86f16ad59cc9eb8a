// CPU kernels of every activation in the op list.
#include <torch/library.h>

#include "cpu/launcher.h"
#include "fastact/activation_ops.h"
#include "fastact/indexed_ops.h"

#define FA_LAUNCHER ::fastact::CpuLauncher
TORCH_LIBRARY_IMPL(fastact, CPU, m) {
  FASTACT_ACTIVATIONS(FA_REGISTER_ACTIVATION)
  FA_REGISTER_INDEXED_OPS(::fastact::CpuLauncher)
}
