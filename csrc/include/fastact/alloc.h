#pragma once
// Output allocation. On the CPU a fresh large output is first touched by the
// kernel that writes it, and with 4 KiB pages that first touch costs a page
// fault per page: ~8 ms per 32 MB, as much as the kernel itself. Asking the
// kernel for transparent huge pages on the buffer (madvise(MADV_HUGEPAGE),
// honored when THP is 'always' or 'madvise', the common defaults) makes that
// one fault per 2 MiB. Memory the allocator reuses is already mapped; the
// advice then changes nothing. CUDA tensors are returned as allocated.
// FASTACT_HUGEPAGES=0 turns the advice off. (Seen on a VM: the first few
// dozen large allocations of a process can fault slower while the kernel
// gathers huge pages; steady state is 2-3x faster than with 4 KiB pages.)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastact {

inline bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* e = std::getenv("FASTACT_HUGEPAGES");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return enabled;
}

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (!t.device().is_cpu() || t.nbytes() < 2 * kHuge || !huge_pages_enabled()) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (begin + t.nbytes()) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advice: failure is harmless
#else
  (void)t;
#endif
}

inline at::Tensor new_like(const at::Tensor& x) {
  at::Tensor out = at::empty_like(x);
  advise_huge_pages(out);
  return out;
}

inline at::Tensor new_tensor(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  advise_huge_pages(out);
  return out;
}

}  // namespace fastact
