// CPU kernels of the GLU family.
#include <torch/library.h>

#include "cpu/launcher.h"
#include "fastact/glu_ops.h"

#define FA_LAUNCHER ::fastact::CpuLauncher
TORCH_LIBRARY_IMPL(fastact, CPU, m) { FA_REGISTER_GLU_FAMILY }
