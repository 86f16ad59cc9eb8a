#pragma once
// dtype dispatch: the four float types. Kernels load scalar_t, compute in
// opmath_t (float for half and bfloat16, else scalar_t) and store once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#define FA_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
