#pragma once
// Argument checks shared by every op. Each message starts with the op's name
// ("fastact.relu: ...") so that a user sees which call was wrong.
#include "fastact/alloc.h"
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fastact {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float(const at::Tensor& t, const char* op, const char* arg = "input") {
  TORCH_CHECK(t.defined(), op, ": ", arg, " is an undefined tensor");
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": ", arg,
                   " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", arg, " must be a strided (dense) tensor");
}

inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op,
                       const char* arg, const char* ref_arg) {
  check_float(t, op, arg);
  TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " is on ", t.device(), " but ", ref_arg,
              " is on ", ref.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", arg, " has dtype ",
                   t.scalar_type(), " but ", ref_arg, " has dtype ", ref.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": ", arg, " has shape ", t.sizes(), " but ",
                    ref_arg, " has shape ", ref.sizes());
}

// A tensor whose elements fill one block of memory (any stride order, no
// gaps, no overlaps), so a kernel can treat it as one flat array. A tensor
// that is not gets copied into the layout empty_like would choose, which is
// also what the fake kernels report.
inline at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : new_like(t).copy_(t);
}

// `t` in the memory layout of the dense tensor `like`, so that flat index i
// means the same element in both.
inline at::Tensor same_layout(const at::Tensor& t, const at::Tensor& like) {
  return t.strides() == like.strides() && t.is_non_overlapping_and_dense()
             ? t
             : new_like(like).copy_(t);
}

// The [seed, offset] int64 pair of a Philox stream (drawn by _philox_seed) on
// the input's device: the kernels read it there through this pointer, so the
// host never reads it (no sync) and each replay of a captured CUDA graph
// reads the pair that replay's _philox_seed wrote.
inline const int64_t* philox_seed_ptr(const at::Tensor& input, const at::Tensor& seed, const char* op) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 2 && seed.is_contiguous(), op,
              ": seed must be a contiguous int64 tensor [seed, offset]");
  TORCH_CHECK(seed.device() == input.device(), op, ": seed is on ", seed.device(),
              " but input is on ", input.device());
  return seed.const_data_ptr<int64_t>();
}

}  // namespace fastact
