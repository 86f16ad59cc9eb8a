#pragma once
// The one seam between the CUDA kernels and what runs them. nvcc sees the
// CUDA runtime; the emulation build (FASTACT_CUDA_EMULATION, test
// infrastructure: see csrc/emu/simt.h) sees a SIMT emulator on the CPU. The
// kernels and their host code are the same source in both; they reach the
// device only through what this header defines:
//   FA_LAUNCH(grid, block, smem, stream, kernel<...>)(args...)  a launch
//   DeviceGuard, current_stream(), multiprocessor_count()       host state
//   blocks_per_multiprocessor(kernel, threads, smem)            occupancy
//   gload(p) / gstore(p, v), gload_if / gstore_if (predicated)  global memory
//   FA_SHARED(T, name, N)                                       T name[N] in shared memory
//   FA_DEVICE_ASSERT(cond, msg)                                 a device-side assert
//   PhiloxState, philox_state(like, gen), philox_unpack(state)  the generator's stream
//   TORCH_LIBRARY_IMPL(fastact, FA_DEVICE_KEY, m)               the registration
// FA_SITE / FA_SITE_ARG pass the source location of a load or store through
// a helper (load_vec, ...) so the emulator's traffic counts name the kernel's
// line; in the CUDA build they are empty.
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>

#if defined(FASTACT_CUDA_EMULATION)
#include <ATen/CPUGeneratorImpl.h>

#include <source_location>

#include "emu/simt.h"
#else
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

// The dispatch key the kernels register under: CUDA, or CPU in the
// emulation build (the whole test suite then runs the CUDA code on CPU
// tensors against torch).
#if defined(FASTACT_CUDA_EMULATION)
#define FA_DEVICE_KEY CPU
#else
#define FA_DEVICE_KEY CUDA
#endif

namespace fastact {

// Grid and block extents as the host code computes them (64-bit), checked
// against the device's limits before they become a dim3, so an oversized
// grid fails with the kernel's name instead of being truncated.
struct Dim {
  int64_t x, y, z;
  Dim(int64_t x_, int64_t y_ = 1, int64_t z_ = 1) : x(x_), y(y_), z(z_) {}
  Dim(dim3 d) : x(d.x), y(d.y), z(d.z) {}
  dim3 to_dim3() const {
    return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z));
  }
};

inline void check_launch(const char* kernel, const Dim& g, const Dim& b, size_t smem) {
  TORCH_CHECK(g.x >= 1 && g.y >= 1 && g.z >= 1 && b.x >= 1 && b.y >= 1 && b.z >= 1,
              "fastact: empty launch of ", kernel, " (grid ", g.x, "x", g.y, "x", g.z, ", block ", b.x, "x",
              b.y, "x", b.z, ")");
  TORCH_CHECK(g.x <= 2147483647 && g.y <= 65535 && g.z <= 65535, "fastact: grid ", g.x, "x", g.y, "x", g.z,
              " of ", kernel, " exceeds the device's limits (2^31-1 x 65535 x 65535)");
  TORCH_CHECK(b.x <= 1024 && b.y <= 1024 && b.z <= 64 && b.x * b.y * b.z <= 1024, "fastact: block ", b.x,
              "x", b.y, "x", b.z, " of ", kernel, " exceeds 1024 threads");
  TORCH_CHECK(smem <= (48u << 10), "fastact: ", smem, " bytes of dynamic shared memory for ", kernel,
              " exceed 48 KB");
}

#if defined(FASTACT_CUDA_EMULATION)

using Stream = int;  // the emulator runs launches in order as they come
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
inline Stream current_stream() { return 0; }
inline int multiprocessor_count() { return fastact_emu_multiprocessors(); }
// The emulator's stand-in for the occupancy calculator: an sm_90
// multiprocessor's thread, block and shared-memory limits (simt.cpp).
template <class... P>
int blocks_per_multiprocessor(void (*)(P...), int threads, size_t smem) {
  return fastact_emu_blocks_per_multiprocessor(threads, smem);
}

// FA_SITE, FA_SHARED, FA_DEVICE_ASSERT, gload, gstore, gload_if and
// gstore_if: emu/simt.h.

// The CUDA generator's per-call (seed, offset), stood in for by the CPU
// generator: torch.manual_seed replays it, every call gets a fresh offset
// (a multiple of 4, as philox_cuda_state(4) advances it).
struct PhiloxState {
  uint64_t seed, offset;
};
inline PhiloxState philox_state(const at::Tensor&, std::optional<at::Generator> generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator,
                                                                  at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  const uint64_t seed = gen->current_seed();
  return PhiloxState{seed, (gen->random64() >> 24) << 2};
}
inline std::tuple<uint64_t, uint64_t> philox_unpack(const PhiloxState& s) { return {s.seed, s.offset}; }

#else

using Stream = cudaStream_t;
using DeviceGuard = c10::cuda::CUDAGuard;
inline Stream current_stream() { return c10::cuda::getCurrentCUDAStream(); }
inline int multiprocessor_count() {
  static int count[64] = {0};  // per device, read once
  const int dev = c10::cuda::current_device();
  if (dev >= 64) return 132;
  if (count[dev] == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&count[dev], cudaDevAttrMultiProcessorCount, dev));
  return count[dev];
}

// How many blocks of `kernel` (`threads` threads, `smem` bytes of dynamic
// shared memory) one multiprocessor of the current device holds at once:
// the occupancy calculator's answer (registers, shared memory, block
// limits), asked once per kernel, configuration and device.
template <class... P>
int blocks_per_multiprocessor(void (*kernel)(P...), int threads, size_t smem) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int, size_t>, int> cache;
  const int dev = c10::cuda::current_device();
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), dev, threads, smem);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) {
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem));
    it = cache.emplace(key, std::max(blocks, 1)).first;
  }
  return it->second;
}

#define FA_SITE
#define FA_SITE_ARG
#define FA_SHARED(T, name, N) __shared__ T name[N]
#define FA_DEVICE_ASSERT(cond, msg) CUDA_KERNEL_ASSERT((cond) && msg)

template <class T>
__device__ __forceinline__ T gload(const T* p) {
  return *p;
}

template <class T>
__device__ __forceinline__ void gstore(T* p, const T& v) {
  *p = v;
}

// Predicated forms (the emulator counts the lanes that skip them).
template <class T>
__device__ __forceinline__ void gload_if(bool on, const T* p, T& v) {
  if (on) v = *p;
}

template <class T>
__device__ __forceinline__ void gstore_if(bool on, T* p, const T& v) {
  if (on) *p = v;
}

// The graph-safe Philox state of the CUDA generator, advanced for one call
// (4 is the generator's required step); unpacked on the device, so each
// replay of a captured graph reads the generator's current offset.
using PhiloxState = at::PhiloxCudaState;
inline PhiloxState philox_state(const at::Tensor& like, std::optional<at::Generator> generator) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(like.device().index()));
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->philox_cuda_state(4);
}
__device__ __forceinline__ std::tuple<uint64_t, uint64_t> philox_unpack(const PhiloxState& s) {
  return at::cuda::philox::unpack(s);
}

#endif

// One kernel launch: FA_LAUNCH(grid, block, smem, stream, kernel)(args...).
// The kernel is named with all its template arguments; its name, as
// written, goes into every error message.
template <class... P>
struct KernelLaunch {
  const char* name;
  void (*kernel)(P...);
  Dim grid, block;
  size_t smem;
  Stream stream;

  template <class... A>
  void operator()(A&&... args) const {
    check_launch(name, grid, block, smem);
#if defined(FASTACT_CUDA_EMULATION)
    emu::launch({name, grid.to_dim3(), block.to_dim3(), smem}, kernel, std::forward<A>(args)...);
#else
    kernel<<<grid.to_dim3(), block.to_dim3(), smem, stream>>>(std::forward<A>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
  }
};

template <class... P>
KernelLaunch<P...> make_launch(const char* name, void (*kernel)(P...), Dim grid, Dim block, size_t smem,
                               Stream stream) {
  return KernelLaunch<P...>{name, kernel, grid, block, smem, stream};
}

#define FA_LAUNCH(GRID, BLOCK, SMEM, STREAM, ...) \
  ::fastact::make_launch(#__VA_ARGS__, &__VA_ARGS__, GRID, BLOCK, SMEM, STREAM)

}  // namespace fastact
