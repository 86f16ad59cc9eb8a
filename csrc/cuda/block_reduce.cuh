#pragma once
// Helpers of the row kernels (blocks of kRowThreads threads over one row or
// one span of a row, or over kRowThreads / LANES rows with LANES lanes of a
// warp each): block-wide and lane-group reductions (a sum, and the merge of
// online (max, sum-of-exp) pairs; the block-wide ones end with a barrier, so
// calls can follow one another), the team of threads that shares a row, and
// a walk over a span of a row with 128-bit loads.
#include <cstdint>
#include <type_traits>

#include "cuda/launcher.cuh"
#include "fastact/cross_entropy_ops.h"

namespace fastact {

constexpr int kRowThreads = 256;

constexpr int kRowWarps = kRowThreads / 32;

// Reductions over each group of LANES consecutive lanes (a power of two up
// to 32): xor offsets below LANES stay inside the group, so the groups of a
// warp reduce side by side; every lane of the warp takes part.
template <int LANES = 32, class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, LANES);
  return v;
}

template <int LANES = 32, class A>
__device__ __forceinline__ OnlineLse<A> warp_lse(OnlineLse<A> v) {
#pragma unroll
  for (int o = LANES / 2; o > 0; o >>= 1) {
    const OnlineLse<A> other{__shfl_xor_sync(0xffffffffu, v.m, o, LANES),
                             __shfl_xor_sync(0xffffffffu, v.s, o, LANES)};
    v.merge(other);
  }
  return v;
}

// Block-wide sum (blocks of kRowThreads threads): warp shuffles, then every
// thread adds the kRowWarps warp sums from shared memory.
template <class A>
__device__ A block_sum(A v) {
  FA_SHARED(A, s, kRowWarps);
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) s[threadIdx.x / 32] = v;
  __syncthreads();
  A total = 0;
#pragma unroll
  for (int i = 0; i < kRowWarps; ++i) total += s[i];
  __syncthreads();
  return total;
}

template <class A>
__device__ OnlineLse<A> block_lse(OnlineLse<A> v) {
  FA_SHARED(A, m, kRowWarps);
  FA_SHARED(A, s, kRowWarps);
  v = warp_lse(v);
  if (threadIdx.x % 32 == 0) {
    m[threadIdx.x / 32] = v.m;
    s[threadIdx.x / 32] = v.s;
  }
  __syncthreads();
  OnlineLse<A> total;
#pragma unroll
  for (int i = 0; i < kRowWarps; ++i) total.merge(OnlineLse<A>{m[i], s[i]});
  __syncthreads();
  return total;
}

// The threads that share one row: LANES consecutive lanes of a warp (a power
// of two up to 32; a block then holds kRowThreads / LANES rows and reduces
// with shuffles alone, no barrier), or the whole block (LANES = kRowThreads:
// one row, or one span of a row, per block). Kernels take their team as a
// parameter, so the emulator's coverage names the variant launched.
template <int LANES>
struct RowTeam {
  static_assert(LANES == kRowThreads || (LANES <= 32 && (LANES & (LANES - 1)) == 0), "a lane group or the block");
  static constexpr int kRowsPerBlock = kRowThreads / LANES;
  __device__ static int rank() { return LANES == kRowThreads ? threadIdx.x : threadIdx.x % LANES; }
  // The block's size read at run time (always kRowThreads): with the
  // constant, ptxas spills in some double instantiations of the block kernels.
  __device__ static int size() { return LANES == kRowThreads ? blockDim.x : LANES; }
  // The row of this thread: the block's first row plus its group.
  __device__ static int64_t row() {
    return static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (LANES == kRowThreads ? 0 : threadIdx.x / LANES);
  }
  template <class A>
  __device__ static A sum(A v) {
    if constexpr (LANES == kRowThreads) {
      return block_sum(v);
    } else {
      return warp_sum<LANES>(v);
    }
  }
  template <class A>
  __device__ static OnlineLse<A> lse(OnlineLse<A> v) {
    if constexpr (LANES == kRowThreads) {
      return block_lse(v);
    } else {
      return warp_lse<LANES>(v);
    }
  }
};

using BlockTeam = RowTeam<kRowThreads>;

// Walks columns [lo, hi) of a row with the team's threads, calling
// f(c, std::integral_constant<int, N>) for the N elements starting at c: a
// scalar head up to the first 16-byte boundary of `row`, then VEC-wide steps
// (VEC * sizeof(S) = 16 bytes, so load<N> is one 128-bit load), then a scalar
// tail. Other operands of the row may use the same vector steps when their
// row starts share `row`'s alignment modulo 16 bytes (checked at launch;
// otherwise the kernel is instantiated with VEC = 1). Two vectors per thread
// are in flight per step.
template <int VEC, class Team = BlockTeam, class S, class F>
__device__ __forceinline__ void for_each_in_span(const S* row, int64_t lo, int64_t hi, F&& f) {
  int64_t head = hi, body = hi;
  if constexpr (VEC > 1) {
    const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(row + lo) % 16) / sizeof(S);
    head = lo + (mis ? VEC - mis : 0);
    head = head < hi ? head : hi;
    body = head + (hi - head) / VEC * VEC;
  }
  const int64_t tid = Team::rank(), nt = Team::size();
  for (int64_t c = lo + tid; c < head; c += nt) f(c, std::integral_constant<int, 1>{});
  if constexpr (VEC > 1) {
#pragma unroll 2
    for (int64_t c = head + tid * VEC; c < body; c += nt * VEC) f(c, std::integral_constant<int, VEC>{});
  }
  for (int64_t c = body + tid; c < hi; c += nt) f(c, std::integral_constant<int, 1>{});
}

template <int N, class S>
__device__ __forceinline__ VecOf<S, N> load_vec(const S* p FA_SITE) {
  return gload(reinterpret_cast<const VecOf<S, N>*>(p) FA_SITE_ARG);
}

template <int N, class S>
__device__ __forceinline__ void store_vec(S* p, const VecOf<S, N>& v FA_SITE) {
  gstore(reinterpret_cast<VecOf<S, N>*>(p), v FA_SITE_ARG);
}

// Whether every pointer shares the first one's alignment modulo 16 bytes, so
// one row walk can vectorize all of them.
template <class... P>
inline bool same_alignment(const void* first, P... rest) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(first) % 16;
  return ((rest == nullptr || reinterpret_cast<uintptr_t>(rest) % 16 == a) && ...);
}

}  // namespace fastact
