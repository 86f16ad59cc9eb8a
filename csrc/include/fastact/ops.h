#pragma once
// The op list: the single source for the activation family. One line per op:
//   X(name, Functor, (C++ argument types), "schema arguments")
// From it come the schemas (registration.cpp), the CPU and CUDA kernels and
// their registration (cpu/activations.cpp, cuda/activations*.cu), and, through
// the `fastact::_activation_ops` op, the Python fake/autograd registration,
// the tests and the benchmarks. Each op `name` comes with `name_` (in place)
// and `name_backward(grad_output, self, ...)`.
//
// The list is cut in two only so that the CUDA kernels compile in parallel.
#include "fastact/activations.h"

#define FASTACT_ACTIVATIONS_A(X)                                                    \
  X(relu, Relu, (), "")                                                             \
  X(relu6, Relu6, (), "")                                                           \
  X(leaky_relu, LeakyRelu, (double), "float negative_slope=0.01")                   \
  X(elu, Elu, (double), "float alpha=1.0")                                          \
  X(selu, Selu, (), "")                                                             \
  X(celu, Celu, (double), "float alpha=1.0")                                        \
  X(gelu, Gelu, (c10::string_view), "str approximate='none'")                       \
  X(silu, Silu, (), "")                                                             \
  X(mish, Mish, (), "")                                                             \
  X(sigmoid, Sigmoid, (), "")                                                       \
  X(tanh, Tanh, (), "")                                                             \
  X(logsigmoid, LogSigmoid, (), "")

#define FASTACT_ACTIVATIONS_B(X)                                                    \
  X(hardswish, Hardswish, (), "")                                                   \
  X(hardsigmoid, Hardsigmoid, (), "")                                               \
  X(hardtanh, Hardtanh, (double, double), "float min_val=-1.0, float max_val=1.0")  \
  X(softplus, Softplus, (double, double), "float beta=1.0, float threshold=20.0")   \
  X(softshrink, Softshrink, (double), "float lambd=0.5")                            \
  X(hardshrink, Hardshrink, (double), "float lambd=0.5")                            \
  X(tanhshrink, Tanhshrink, (), "")                                                 \
  X(softsign, Softsign, (), "")                                                     \
  X(threshold, Threshold, (double, double), "float threshold, float value")         \
  X(swish, Swish, (double), "float beta=1.0")                                       \
  X(quick_gelu, QuickGelu, (), "")                                                  \
  X(squared_relu, SquaredRelu, (), "")

#define FASTACT_ACTIVATIONS(X) FASTACT_ACTIVATIONS_A(X) FASTACT_ACTIVATIONS_B(X)

// The gated linear units: out = f(gate) * up, with the functor of the
// activation of the same name. X(name, Functor, (C++ argument types), "schema
// arguments"). Each comes as `name(gate, up, ...)` with
// `name_backward(grad_output, gate, up, ...) -> (grad_gate, grad_up)` and as
// `name_packed(input, dim, ...)` (gate and up are the two halves of `input`
// along `dim`) with `name_packed_backward(grad_output, input, dim, ...)`, which
// writes one packed gradient; the packed forms take a last argument
// `interleaved` (gate and up at the even and odd positions of `dim` instead
// of its two halves). torch's glu is the packed form with the halves swapped
// (first half times sigmoid of the second). A functor that declares kGated
// defines the whole unit, fwd(gate, up), instead of an activation times up.
#define FASTACT_GLUS(X)                                                                    \
  X(swiglu, Silu, (), "")                                                                  \
  X(geglu, Gelu, (c10::string_view), "str approximate='none'")                             \
  X(reglu, Relu, (), "")                                                                   \
  X(clamped_swiglu, ClampedSwiglu, (double, double), "float alpha=1.702, float limit=7.0")
