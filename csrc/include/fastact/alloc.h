#pragma once
// Output allocation.
//
// On the CPU a fresh large output is first touched by the kernel that writes
// it, and with 4 KiB pages that first touch costs a page fault per page: ~8 ms
// per 32 MB on the VMs we measure, as much as the kernel itself, paid again on
// every call because glibc returns allocations of 32 MB and more to the OS on
// free. Two things remove it:
//
// 1. Large CPU outputs (4 MiB and up, dense) come from a bounded cache of
//    freed output buffers (CpuOutputCache below): a training loop asks for the
//    same sizes every step, and a buffer that is already mapped costs no fault
//    at all. The cache keeps at most FASTACT_CPU_CACHE_MB MiB of freed buffers
//    (default: 1024, or an eighth of the physical memory if that is less;
//    0 turns it off), evicting the least recently freed first;
//    fastact.empty_cpu_cache() returns it all to the system.
// 2. A buffer the cache allocates is 2 MiB-aligned and advised as transparent
//    huge pages (madvise(MADV_HUGEPAGE), honored when THP is 'always' or
//    'madvise', the common defaults): its first touch is one fault per 2 MiB,
//    and kernels streaming through it miss the TLB less. FASTACT_HUGEPAGES=0
//    turns the advice off.
//
// Buffers live under a c10::Allocator of their own, so the storages stay
// resizable (resize_ allocates through the same cache). CUDA outputs, small
// ones and non-dense layouts are plain at::empty / at::empty_like.
#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace fastact {

inline bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* e = std::getenv("FASTACT_HUGEPAGES");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return enabled;
}

inline void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (huge_pages_enabled()) madvise(p, bytes, MADV_HUGEPAGE);  // advice: failure is harmless
#else
  (void)p;
  (void)bytes;
#endif
}

class CpuOutputCache final : public c10::Allocator {
 public:
  static constexpr size_t kAlign = size_t{2} << 20;  // a transparent huge page
  static constexpr size_t kMinBytes = 2 * kAlign;    // smaller outputs: plain malloc

  // One per shared library, never destroyed: tensors can be freed during
  // static destruction at exit.
  static CpuOutputCache& get() {
    static CpuOutputCache* cache = new CpuOutputCache();
    return *cache;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes || limit_ == 0) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kAlign - 1) / kAlign * kAlign;
    void* p = take(bytes);
    if (p == nullptr) {
      p = std::aligned_alloc(kAlign, bytes);
      if (p == nullptr) {  // memory is short: give the cached buffers back and try once more
        release();
        p = std::aligned_alloc(kAlign, bytes);
      }
      TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr, "fastact: out of CPU memory allocating ", bytes,
                       " bytes");
      advise_huge_pages(p, bytes);
      std::lock_guard<std::mutex> lock(mu_);
      live_[p] = bytes;
    }
    return {p, p, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &give_back; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

  // Frees every cached buffer; returns how many bytes that was.
  int64_t release() {
    std::vector<Block> freed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      freed.swap(free_);
      cached_ = 0;
    }
    int64_t bytes = 0;
    for (const Block& b : freed) {
      std::free(b.first);
      bytes += static_cast<int64_t>(b.second);
    }
    return bytes;
  }

  // {bytes cached (free), bytes live (in tensors), limit}
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    size_t live = 0;
    for (const auto& kv : live_) live += kv.second;
    return {static_cast<int64_t>(cached_), static_cast<int64_t>(live), static_cast<int64_t>(limit_)};
  }

 private:
  using Block = std::pair<void*, size_t>;

  CpuOutputCache() : limit_(default_limit()) {
#if defined(__linux__)
    // A fork (a DataLoader worker) while another thread holds the lock would
    // leave the child's copy locked forever: hold it across the fork.
    pthread_atfork([] { get().mu_.lock(); }, [] { get().mu_.unlock(); }, [] { get().mu_.unlock(); });
#endif
  }

  static size_t default_limit() {
    if (const char* e = std::getenv("FASTACT_CPU_CACHE_MB")) {
      char* end = nullptr;
      const long long mb = std::strtoll(e, &end, 10);
      if (end != e && mb >= 0) return static_cast<size_t>(mb) << 20;
    }
    size_t limit = size_t{1} << 30;
#if defined(__linux__)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) limit = std::min(limit, static_cast<size_t>(pages) * page / 8);
#endif
    return limit;
  }

  // The most recently freed cached buffer of exactly `bytes`, or nullptr.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
      if (it->second != bytes) continue;
      void* p = it->first;
      free_.erase(std::next(it).base());
      cached_ -= bytes;
      live_[p] = bytes;
      return p;
    }
    return nullptr;
  }

  static void give_back(void* p) {
    CpuOutputCache& c = get();
    std::vector<void*> to_free;
    {
      std::lock_guard<std::mutex> lock(c.mu_);
      auto it = c.live_.find(p);
      TORCH_INTERNAL_ASSERT(it != c.live_.end(), "fastact: freeing a buffer the output cache does not own");
      const size_t bytes = it->second;
      c.live_.erase(it);
      if (bytes > c.limit_) {
        to_free.push_back(p);
      } else {
        size_t evict = 0;  // least recently freed first
        while (c.cached_ + bytes > c.limit_) {
          c.cached_ -= c.free_[evict].second;
          to_free.push_back(c.free_[evict++].first);
        }
        c.free_.erase(c.free_.begin(), c.free_.begin() + static_cast<std::ptrdiff_t>(evict));
        c.free_.emplace_back(p, bytes);
        c.cached_ += bytes;
      }
    }
    for (void* q : to_free) std::free(q);
  }

  std::mutex mu_;
  std::unordered_map<void*, size_t> live_;
  std::vector<Block> free_;  // least recently freed first
  size_t cached_ = 0;
  const size_t limit_;
};

// Outputs on the CPU go through the cache's allocator, which itself hands
// small requests (and all of them when the cache is off) to torch's CPU
// allocator. An uninitialized output shaped like x (x's strides where x is
// dense and non-overlapping, as at::empty_like).
inline at::Tensor new_like(const at::Tensor& x) {
  if (x.device().is_cpu() && x.layout() == at::kStrided && x.is_non_overlapping_and_dense() &&
      !x.is_quantized()) {
    return at::detail::empty_strided_generic(x.sizes(), x.strides(), &CpuOutputCache::get(),
                                             c10::DispatchKeySet(c10::DispatchKey::CPU), x.scalar_type());
  }
  return at::empty_like(x);
}

inline at::Tensor new_tensor(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (options.device().is_cpu() && options.layout() == at::kStrided) {
    return at::detail::empty_generic(sizes, &CpuOutputCache::get(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     c10::typeMetaToScalarType(options.dtype()), std::nullopt);
  }
  return at::empty(sizes, options);
}

}  // namespace fastact
