#pragma once
// The CUDA elementwise launcher: one kernel template serves every op adapter
// (unary, unary backward, gated, gated backward, and the index-aware ones).
// Three paths, the same values (each element's result does not depend on the
// path, and a random op draws element i from Philox counter i / 4 in all):
//   - vector: every pointer 16-byte aligned and rows of whole vectors; each
//     thread moves 16 bytes per operand per step (128-bit loads and stores).
//   - staged: dense operands of any alignment and row width (x[1:], rows of
//     1001, the packed GLU halves of an odd width, a broadcast bias). Each
//     warp takes chunks of 32 vectors of consecutive elements; per operand it
//     walks the chunk's pieces of rows with a head up to the operand's next
//     32-byte boundary, a body of 128-bit accesses and a tail, through its
//     slice of shared memory, so every warp access touches only the sectors
//     its bytes need and each thread still computes one vector of
//     consecutive elements (one Philox call per four).
//   - scalar: paired operands (every other element: the interleaved GLU
//     form), and narrow rows; one element per step. Each warp's loads of gate
//     and up then fall on the same cache lines, so DRAM traffic is that of a
//     dense read.
// Indices are 64-bit throughout, so tensors past 2^31 elements are handled.
// The grid is one wave: the multiprocessors times the blocks of the kernel
// each holds at once (the occupancy calculator), grid-stride loops covering
// the rest. Launches go on the current stream of the current device (the
// caller holds the guard).
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>

#include "cuda/runtime.cuh"
#include "fastact/elementwise.h"
#include "fastact/philox.h"

namespace fastact {

template <class S, int VEC>
struct alignas(sizeof(S) * VEC) VecOf {
  S v[VEC];
};

// One thread's vector of `valid` (of VEC) consecutive elements from flat
// index e: y = op(x) with x[k] = in(k, j) and out(k, j, y[k]) for element
// e + j, a random op's draws made one Philox call per group of four elements
// (e is a multiple of VEC, so a vector of 2, 4 or 8 elements spans whole
// groups or lies inside one).
template <int VEC, int NIN, int NOUT, class T, class Op, class In, class Out>
__device__ __forceinline__ void apply_vec(const Op& op, int64_t e, int valid, uint64_t rng_seed,
                                          uint64_t rng_offset, In&& in, Out&& out) {
  Philox4x32 draws{};
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    if (j >= valid) break;
    T x[NIN];
    T y[NOUT];
#pragma unroll
    for (int k = 0; k < NIN; ++k) x[k] = in(k, j);
    if constexpr (IsRandomOp<Op>::value) {
      const int64_t i = e + j;
      // (the lane by selects, not draws.v[i & 3]: see philox_lane)
      if (j == 0 || (i & 3) == 0) draws = philox4x32_10(rng_seed, rng_offset, static_cast<uint64_t>(i) >> 2);
      op(i, uint_to_uniform(philox_lane(draws, static_cast<uint32_t>(i & 3))), x, y);
    } else {
      op(e + j, x, y);
    }
#pragma unroll
    for (int k = 0; k < NOUT; ++k) out(k, j, y[k]);
  }
}

template <int VEC, class Op, class S, int NIN, int NOUT, unsigned PAIRED_IN, unsigned PAIRED_OUT>
__global__ void __launch_bounds__(256)
    elementwise_kernel(Op op, ElementwiseArgs<S, NIN, NOUT, PAIRED_IN, PAIRED_OUT> a) {
  using T = at::opmath_type<S>;
  using V = VecOf<S, VEC>;
  using Args = ElementwiseArgs<S, NIN, NOUT, PAIRED_IN, PAIRED_OUT>;
  static_assert(VEC == 1 || Args::kDense, "vector loads need dense operands");
  const int64_t n = a.rows * a.inner;
  const int64_t nvec = n / VEC;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool small = n <= static_cast<int64_t>(UINT32_MAX);
  // A random op's stream (seed, offset), read from global memory once per
  // thread; the grid-stride loop keeps them in registers.
  uint64_t rng_seed = 0, rng_offset = 0;
  if constexpr (IsRandomOp<Op>::value) {
    rng_seed = op.rng_seed();
    rng_offset = op.rng_offset();
  }
  for (int64_t v = tid; v < nvec; v += step) {
    const int64_t e = v * VEC;
    int64_t row = 0, col = e;
    if (a.rows > 1) {
      // 64-bit division is many times slower than 32-bit on the GPU; use
      // the latter whenever the indices fit (every realistic layer).
      row = small ? static_cast<int64_t>(static_cast<uint32_t>(e) / static_cast<uint32_t>(a.inner))
                  : e / a.inner;
      col = e - row * a.inner;
    }
    V vin[NIN];
#pragma unroll
    for (int k = 0; k < NIN; ++k)
      vin[k] = gload(reinterpret_cast<const V*>(a.in[k] + row * a.in_stride[k] + col * Args::in_step(k)));
    V vout[NOUT];
    apply_vec<VEC, NIN, NOUT, T>(
        op, e, VEC, rng_seed, rng_offset, [&](int k, int j) { return static_cast<T>(vin[k].v[j]); },
        [&](int k, int j, T y) { vout[k].v[j] = static_cast<S>(y); });
#pragma unroll
    for (int k = 0; k < NOUT; ++k)
      gstore(reinterpret_cast<V*>(a.out[k] + row * a.out_stride[k] + col * Args::out_step(k)), vout[k]);
  }
  // The vector path is only taken with a single row or rows that hold whole
  // vectors, so the remainder (fewer than VEC elements) lies in the last row.
  if (VEC > 1) {
    const int64_t e = nvec * VEC + tid;
    if (e < n) {
      const int64_t row = a.rows - 1;
      const int64_t col = e - row * a.inner;
      T x[NIN];
      T y[NOUT];
#pragma unroll
      for (int k = 0; k < NIN; ++k)
        x[k] = static_cast<T>(gload(a.in[k] + row * a.in_stride[k] + col * Args::in_step(k)));
      if constexpr (IsRandomOp<Op>::value) {
        op(e, philox_uniform(rng_seed, rng_offset, static_cast<uint64_t>(e)), x, y);
      } else {
        op(e, x, y);
      }
#pragma unroll
      for (int k = 0; k < NOUT; ++k)
        gstore(a.out[k] + row * a.out_stride[k] + col * Args::out_step(k), static_cast<S>(y[k]));
    }
  }
}

// ---- the staged path ----------------------------------------------------------

constexpr int kStagedThreads = 256;

// Calls f(p, offset, len) for each piece of flat elements [f0, f0 + count) of
// a dense [rows, inner] operand (base, row stride): len elements from p, the
// first of them at offset `offset` of the chunk. Warp-uniform.
template <class S, class F>
__device__ __forceinline__ void for_each_piece(S* base, int64_t stride, int64_t rows, int64_t inner, bool small,
                                               int64_t f0, int count, F&& f) {
  int offset = 0;
  while (offset < count) {
    const int64_t pos = f0 + offset;
    int64_t row = 0, col = pos;
    if (rows > 1) {
      row = small ? static_cast<int64_t>(static_cast<uint32_t>(pos) / static_cast<uint32_t>(inner)) : pos / inner;
      col = pos - row * inner;
    }
    const int len = static_cast<int>(inner - col < count - offset ? inner - col : count - offset);
    f(base + row * stride + col, offset, len);
    offset += len;
  }
}

// The split of a piece of `len` elements at p into a head up to p's next
// 32-byte boundary (at most one sector), a body of whole VEC-vectors from
// there and a tail (within one sector).
template <int VEC, class S>
struct PieceSplit {
  int head, body, tail;  // elements, vectors, elements
  __device__ __forceinline__ PieceSplit(const S* p, int len) {
    constexpr int kSector = 32 / static_cast<int>(sizeof(S));
    const int mis = static_cast<int>(reinterpret_cast<uintptr_t>(p) % 32 / sizeof(S));
    head = mis ? kSector - mis : 0;
    head = head < len ? head : len;
    body = (len - head) / VEC;
    tail = len - head - body * VEC;
  }
};

// Copies the warp's chunk of one operand into its shared slice `st` (element
// o of the chunk at st[o]): per piece, lane l loads head element l, body
// vector l and tail element l, predicated, so each is one warp access.
template <int VEC, class S>
__device__ __forceinline__ void stage_in(const S* base, int64_t stride, int64_t rows, int64_t inner, bool small,
                                         int64_t f0, int count, int lane, S* st) {
  using V = VecOf<S, VEC>;
  for_each_piece(base, stride, rows, inner, small, f0, count, [&](const S* p, int offset, int len) {
    const PieceSplit<VEC, S> sp(p, len);
    S h{}, t{};
    gload_if(lane < sp.head, p + lane, h);
    if (lane < sp.head) st[offset + lane] = h;
    V b;
    gload_if(lane < sp.body, reinterpret_cast<const V*>(p + sp.head) + lane, b);
    if (lane < sp.body) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) st[offset + sp.head + lane * VEC + j] = b.v[j];
    }
    const int tail0 = sp.head + sp.body * VEC;
    gload_if(lane < sp.tail, p + tail0 + lane, t);
    if (lane < sp.tail) st[offset + tail0 + lane] = t;
  });
}

// The reverse: the chunk of one output from the warp's shared slice.
template <int VEC, class S>
__device__ __forceinline__ void stage_out(S* base, int64_t stride, int64_t rows, int64_t inner, bool small,
                                          int64_t f0, int count, int lane, const S* st) {
  using V = VecOf<S, VEC>;
  for_each_piece(base, stride, rows, inner, small, f0, count, [&](S* p, int offset, int len) {
    const PieceSplit<VEC, S> sp(p, len);
    gstore_if(lane < sp.head, p + lane, st[offset + (lane < sp.head ? lane : 0)]);
    V b;
    if (lane < sp.body) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) b.v[j] = st[offset + sp.head + lane * VEC + j];
    }
    gstore_if(lane < sp.body, reinterpret_cast<V*>(p + sp.head) + lane, b);
    const int tail0 = sp.head + sp.body * VEC;
    gstore_if(lane < sp.tail, p + tail0 + lane, st[offset + tail0 + (lane < sp.tail ? lane : 0)]);
  });
}

// Dense operands of any alignment and row width (see the top of this file).
// Warp w takes chunks w, w + warps, ... of 32 * VEC consecutive elements;
// lane l computes the chunk's vector l, from and into shared memory (one
// slice of the warp per operand; an output overwrites the lane's own vector
// of an input slice, which no other lane reads).
template <int VEC, class Op, class S, int NIN, int NOUT>
__global__ void __launch_bounds__(kStagedThreads)
    elementwise_staged_kernel(Op op, ElementwiseArgs<S, NIN, NOUT> a) {
  using T = at::opmath_type<S>;
  using V = VecOf<S, VEC>;
  constexpr int kChunk = 32 * VEC;
  constexpr int kSlices = NIN > NOUT ? NIN : NOUT;
  constexpr int kSlice = kStagedThreads * VEC;  // elements of one operand's slices, all warps
  FA_SHARED(V, stage, kStagedThreads * kSlices);
  const int lane = static_cast<int>(threadIdx.x % 32);
  // operand k's slice of this warp: st + k * kSlice
  S* const st = reinterpret_cast<S*>(stage + (threadIdx.x / 32) * 32);
  const int64_t n = a.rows * a.inner;
  const bool small = n <= static_cast<int64_t>(UINT32_MAX);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  // A random op's stream (seed, offset), read from global memory once per
  // thread; the grid-stride loop keeps them in registers.
  uint64_t rng_seed = 0, rng_offset = 0;
  if constexpr (IsRandomOp<Op>::value) {
    rng_seed = op.rng_seed();
    rng_offset = op.rng_offset();
  }
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; w < chunks; w += warps) {
    const int64_t f0 = w * kChunk;
    const int count = static_cast<int>(n - f0 < kChunk ? n - f0 : kChunk);
#pragma unroll
    for (int k = 0; k < NIN; ++k)
      stage_in<VEC>(a.in[k], a.in_stride[k], a.rows, a.inner, small, f0, count, lane, st + k * kSlice);
    __syncwarp();
    S* const mine = st + lane * VEC;
    apply_vec<VEC, NIN, NOUT, T>(
        op, f0 + lane * VEC, count - lane * VEC, rng_seed, rng_offset,
        [&](int k, int j) { return static_cast<T>(mine[k * kSlice + j]); },
        [&](int k, int j, T y) { mine[k * kSlice + j] = static_cast<S>(y); });
    __syncwarp();
#pragma unroll
    for (int k = 0; k < NOUT; ++k)
      stage_out<VEC>(a.out[k], a.out_stride[k], a.rows, a.inner, small, f0, count, lane, st + k * kSlice);
    __syncwarp();
  }
}

// Blocks of `threads` of `kernel` that fill the device once (one wave).
template <class... P>
int64_t resident_blocks(void (*kernel)(P...), int threads) {
  return static_cast<int64_t>(multiprocessor_count()) * blocks_per_multiprocessor(kernel, threads, 0);
}

// Enough blocks to fill every SM several times over; the grid-stride loop
// covers the rest (the row kernels' sizing).
inline int64_t max_resident_blocks() { return static_cast<int64_t>(multiprocessor_count()) * 16; }

struct CudaLauncher {
  static constexpr int kThreads = 256;
  static_assert(kThreads == kStagedThreads, "one block size for every path");

  template <class Op, class S, int NIN, int NOUT, unsigned PAIRED_IN, unsigned PAIRED_OUT>
  static void run(const Op& op, const ElementwiseArgs<S, NIN, NOUT, PAIRED_IN, PAIRED_OUT>& a) {
    static_assert(Op::kIn == NIN && Op::kOut == NOUT, "op adapter and operands disagree");
    constexpr int kVec = 16 / sizeof(S);
    constexpr bool kDense = ElementwiseArgs<S, NIN, NOUT, PAIRED_IN, PAIRED_OUT>::kDense;
    const int64_t n = a.numel();
    if (n == 0) return;
    bool vec_ok = kDense && (a.rows == 1 || a.inner % kVec == 0);
    for (int k = 0; k < NIN; ++k)
      vec_ok = vec_ok && reinterpret_cast<uintptr_t>(a.in[k]) % 16 == 0 &&
               (a.rows == 1 || a.in_stride[k] % kVec == 0);
    for (int k = 0; k < NOUT; ++k)
      vec_ok = vec_ok && reinterpret_cast<uintptr_t>(a.out[k]) % 16 == 0 &&
               (a.rows == 1 || a.out_stride[k] % kVec == 0);
    const Stream stream = current_stream();
    if constexpr (kDense) {
      if (vec_ok) {
        auto* const kernel = &elementwise_kernel<kVec, Op, S, NIN, NOUT, 0u, 0u>;
        const int64_t blocks = std::min(ceil_blocks((n + kVec - 1) / kVec), resident_blocks(kernel, kThreads));
        FA_LAUNCH(blocks, kThreads, 0, stream, elementwise_kernel<kVec, Op, S, NIN, NOUT, 0u, 0u>)(op, a);
        return;
      }
      // Rows narrower than a few vectors stay on the scalar path: a chunk
      // would be many pieces of a handful of elements each.
      if (a.rows == 1 || a.inner >= 8 * kVec) {
        auto* const kernel = &elementwise_staged_kernel<kVec, Op, S, NIN, NOUT>;
        const int64_t chunks = (n + 32 * kVec - 1) / (32 * kVec);
        const int64_t blocks = std::min((chunks + kThreads / 32 - 1) / (kThreads / 32),
                                        resident_blocks(kernel, kThreads));
        FA_LAUNCH(blocks, kThreads, 0, stream, elementwise_staged_kernel<kVec, Op, S, NIN, NOUT>)(op, a);
        return;
      }
    }
    auto* const kernel = &elementwise_kernel<1, Op, S, NIN, NOUT, PAIRED_IN, PAIRED_OUT>;
    const int64_t blocks = std::min(ceil_blocks(n), resident_blocks(kernel, kThreads));
    FA_LAUNCH(blocks, kThreads, 0, stream, elementwise_kernel<1, Op, S, NIN, NOUT, PAIRED_IN, PAIRED_OUT>)(op, a);
  }

 private:
  static int64_t ceil_blocks(int64_t work) { return (work + kThreads - 1) / kThreads; }
};

}  // namespace fastact
