#pragma once
// The CUDA elementwise launcher: one kernel template serves every op adapter
// (unary, unary backward, gated, gated backward, and the index-aware ones).
// Each thread moves 16 bytes per operand per step (128-bit loads and stores)
// when every pointer is 16-byte aligned and no vector crosses a row end;
// otherwise the same kernel runs with one element per step. Indices are
// 64-bit throughout, so tensors past 2^31 elements are handled. Paired
// operands (every other element: the interleaved GLU form) take the
// one-element path; each warp's loads of gate and up then fall on the same
// cache lines, so DRAM traffic is that of a dense read. Launches go
// on the current stream of the current device (the caller holds the guard).
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
    Philox4x32 draws{};
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      T x[NIN];
      T y[NOUT];
#pragma unroll
      for (int k = 0; k < NIN; ++k) x[k] = static_cast<T>(vin[k].v[j]);
      if constexpr (IsRandomOp<Op>::value) {
        // One Philox call per group of four elements (a vector of 2, 4 or 8
        // elements starts on an even index, so it spans whole groups or lies
        // inside one).
        const int64_t i = e + j;
        // (the lane by selects, not draws.v[i & 3]: see philox_lane)
        if (j == 0 || (i & 3) == 0)
          draws = philox4x32_10(rng_seed, rng_offset, static_cast<uint64_t>(i) >> 2);
        op(i, uint_to_uniform(philox_lane(draws, static_cast<uint32_t>(i & 3))), x, y);
      } else {
        op(e + j, x, y);
      }
#pragma unroll
      for (int k = 0; k < NOUT; ++k) vout[k].v[j] = static_cast<S>(y[k]);
    }
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

// Enough blocks to fill every SM several times over; the grid-stride loop
// covers the rest.
inline int64_t max_resident_blocks() { return static_cast<int64_t>(multiprocessor_count()) * 16; }

struct CudaLauncher {
  static constexpr int kThreads = 256;

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
    const int64_t work = vec_ok ? (n + kVec - 1) / kVec : n;
    const int64_t blocks = std::min((work + kThreads - 1) / kThreads, max_resident_blocks());
    const Stream stream = current_stream();
    if constexpr (kDense) {
      if (vec_ok) {
        FA_LAUNCH(blocks, kThreads, 0, stream, elementwise_kernel<kVec, Op, S, NIN, NOUT, 0u, 0u>)(op, a);
        return;
      }
    }
    FA_LAUNCH(blocks, kThreads, 0, stream,
              elementwise_kernel<1, Op, S, NIN, NOUT, PAIRED_IN, PAIRED_OUT>)(op, a);
  }
};

}  // namespace fastact
