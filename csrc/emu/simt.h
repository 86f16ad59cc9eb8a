#pragma once
// A small SIMT emulator: the CUDA kernels of csrc/cuda/ compiled by the host
// compiler and run on the CPU, for the emulation lane of the tests
// (FASTACT_CUDA_EMULATION). Test infrastructure only: the product build never
// includes this file; the kernels reach it through the seam cuda/runtime.cuh.
//
// What it gives the kernels:
//   - gridDim/blockIdx/blockDim/threadIdx with CUDA's types and meaning;
//   - the threads of a block as cooperative fibers on one OS thread:
//     __syncthreads() is a real barrier over the block, warp shuffles wait
//     for the 32 lanes of their warp, and between two such points the
//     threads run in a forward, reverse or seeded-shuffled order (changing
//     from one barrier interval to the next), so a read of shared memory that
//     a barrier should have published gives a wrong answer in some order;
//   - shared memory per block (FA_SHARED), filled with 0xFF bytes (NaN for
//     floats) at each block start, so a read before any write shows;
//   - global loads and stores through fastact::gload / gstore, which check
//     the alignment a vector access needs and, while a trace is on, count
//     bytes per kernel, load site and memory region, and the 32-byte sectors
//     each warp-wide access touches;
//   - launch checks (block <= 1024 threads and <= the kernel's
//     __launch_bounds__, grid.x < 2^31, grid.y/z <= 65535, no empty grid,
//     shared memory <= 48 KB), device asserts, and a launch log.
// Errors surface as fastact::emu::Error from the launch (a RuntimeError in
// Python), naming the kernel and its configuration.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- CUDA's vocabulary for host-compiled kernels ---------------------------

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// The built-in index variables: plain aggregates (no TLS init wrapper), set
// by the scheduler before it resumes each thread.
struct fastact_emu_uint3 {
  unsigned x, y, z;
};
extern thread_local fastact_emu_uint3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Prefer FA_SHARED (poisoned, sized, per block); a plain __shared__ still
// works because one OS thread runs one block at a time.
#define __shared__ static thread_local

namespace fastact::emu {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct LaunchConfig {
  const char* kernel;  // as written at the launch site, e.g. "ce_forward_kernel<kVec, scalar_t>"
  dim3 grid, block;
  size_t dynamic_smem;
  const char* signature = "";  // the kernel's parameter types (for the coverage counts)
};

// Runs body(ctx) once per thread of every block of the grid; throws Error on
// a launch-limit violation, a device assert, a misaligned access, a
// divergent barrier or shuffle, or a deadlock.
void run_kernel(const LaunchConfig& cfg, void (*body)(void*), void* ctx);

// Registered by the generated wrappers of the emulation build: the
// __launch_bounds__ of each kernel, by name.
struct LaunchBounds {
  LaunchBounds(const char* kernel, int max_threads);
};

// Device side.
void syncthreads();
uint64_t shuffle(unsigned mask, uint64_t bits, int arg, int width, int mode);  // mode: 0 xor, 1 down, 2 up, 3 idx
void syncwarp(unsigned mask);
void* shared_array(void** slot, size_t bytes, size_t align);
[[noreturn]] void device_trap(const char* what, const char* file, int line);
void check_alignment(const void* p, size_t align, const std::source_location& site);
void record_access(const void* p, size_t bytes, bool store, const std::source_location& site);
// A predicated-off lane's turn at a load or store site: it takes part in the
// warp's instruction (the trace groups lanes by their count of accesses at a
// site) without touching memory.
void skip_access(size_t bytes, bool store, const std::source_location& site);
extern bool g_trace;  // set while a trace is on

}  // namespace fastact::emu

inline void __syncthreads() { fastact::emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { fastact::emu::syncwarp(mask); }

namespace fastact::emu {
template <class T>
T shuffle_value(unsigned mask, T v, int arg, int width, int mode) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp shuffles move up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shuffle(mask, bits, arg, width, mode);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}
}  // namespace fastact::emu

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return fastact::emu::shuffle_value(mask, v, lane_mask, width, 0);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return fastact::emu::shuffle_value(mask, v, static_cast<int>(delta), width, 1);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return fastact::emu::shuffle_value(mask, v, static_cast<int>(delta), width, 2);
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return fastact::emu::shuffle_value(mask, v, src_lane, width, 3);
}

// Runs kernel(args...) over the grid: the parameters are converted once, as a
// launch does, and each thread's call copies them into its own by-value
// parameters.
namespace fastact::emu {
template <class... P, class... A>
void launch(LaunchConfig cfg, void (*kernel)(P...), A&&... args) {
  std::tuple<P...> params(std::forward<A>(args)...);
  auto call = [&] { std::apply(kernel, params); };
  using Call = decltype(call);
  cfg.signature = __PRETTY_FUNCTION__;  // names P..., i.e. the dtype and operand count of this variant
  run_kernel(cfg, [](void* c) { (*static_cast<Call*>(c))(); }, &call);
}
}  // namespace fastact::emu

// ---- the device API of the seam (cuda/runtime.cuh), emulated ----------------

// Shared memory of the running block: T name[N], one array per block per
// declaration (and per template instantiation, as in CUDA).
#define FA_SHARED(T, name, N)                                                                     \
  static thread_local void* name##_fa_slot = nullptr;                                             \
  T* const name = static_cast<T*>(::fastact::emu::shared_array(&name##_fa_slot, sizeof(T) * (N), \
                                                                alignof(T)))

#define FA_DEVICE_ASSERT(cond, msg) \
  ((cond) ? (void)0 : ::fastact::emu::device_trap(#cond " (" msg ")", __FILE__, __LINE__))

// The source location of a load or store, passed through helpers.
#define FA_SITE , ::std::source_location fa_site = ::std::source_location::current()
#define FA_SITE_ARG , fa_site

namespace fastact {
// A global load or store: checked for the alignment the access needs
// (a misaligned vector access faults on the GPU), counted while tracing.
template <class T>
inline T gload(const T* p FA_SITE) {
  emu::check_alignment(p, alignof(T), fa_site);
  if (emu::g_trace) emu::record_access(p, sizeof(T), false, fa_site);
  return *p;
}

template <class T>
inline void gstore(T* p, const T& v FA_SITE) {
  emu::check_alignment(p, alignof(T), fa_site);
  if (emu::g_trace) emu::record_access(p, sizeof(T), true, fa_site);
  *p = v;
}

// Predicated forms: a lane with `on` false skips the access but still takes
// part in the warp's instruction, so the trace groups the lanes of one
// partial (head or tail) access together.
template <class T>
inline void gload_if(bool on, const T* p, T& v FA_SITE) {
  if (on) {
    v = gload(p FA_SITE_ARG);
  } else if (emu::g_trace) {
    emu::skip_access(sizeof(T), false, fa_site);
  }
}

template <class T>
inline void gstore_if(bool on, T* p, const T& v FA_SITE) {
  if (on) {
    gstore(p, v FA_SITE_ARG);
  } else if (emu::g_trace) {
    emu::skip_access(sizeof(T), true, fa_site);
  }
}
}  // namespace fastact

// ---- host-side controls (C ABI, for ctypes from the tests) -------------------
extern "C" {
// Tracing: counts of bytes per kernel/site/region and warp sector coalescing.
void fastact_emu_trace_begin();
void fastact_emu_trace_end();
void fastact_emu_add_region(const char* name, uint64_t ptr, uint64_t bytes);
// A JSON report of the launches since the last trace_begin (or reset).
const char* fastact_emu_report();
void fastact_emu_reset();
int64_t fastact_emu_launch_count();
// Launches per kernel variant (launch-site text and parameter types) since
// the library was loaded, as JSON: which paths a test run has reached.
const char* fastact_emu_coverage();
// Emulated device: multiprocessor count (sizes the grids the host code picks),
// thread order between barriers (0 mixed, 1 forward, 2 reverse, 3 shuffled)
// and the seed of the shuffles.
void fastact_emu_configure(int multiprocessors, int order, uint64_t seed);
int fastact_emu_multiprocessors();
// The host's stand-in for cudaOccupancyMaxActiveBlocksPerMultiprocessor.
int fastact_emu_blocks_per_multiprocessor(int threads, uint64_t dynamic_smem);
}
