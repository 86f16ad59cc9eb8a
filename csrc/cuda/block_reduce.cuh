#pragma once
// Block-wide reductions for the row kernels (one block of kRowThreads threads
// per row): a sum, and the merge of online (max, sum-of-exp) pairs. Each
// ends with a barrier, so calls can follow one another.
#include "fastact/cross_entropy_ops.h"

namespace fastact {

constexpr int kRowThreads = 256;

template <class A>
__device__ A block_sum(A v) {
  __shared__ A s[kRowThreads];
  const int tid = threadIdx.x;
  s[tid] = v;
  __syncthreads();
  for (int half = kRowThreads / 2; half > 0; half /= 2) {
    if (tid < half) s[tid] += s[tid + half];
    __syncthreads();
  }
  const A total = s[0];
  __syncthreads();
  return total;
}

template <class A>
__device__ OnlineLse<A> block_lse(OnlineLse<A> v) {
  __shared__ A m[kRowThreads], s[kRowThreads];
  const int tid = threadIdx.x;
  m[tid] = v.m;
  s[tid] = v.s;
  __syncthreads();
  for (int half = kRowThreads / 2; half > 0; half /= 2) {
    if (tid < half) {
      OnlineLse<A> a{m[tid], s[tid]}, b{m[tid + half], s[tid + half]};
      a.merge(b);
      m[tid] = a.m;
      s[tid] = a.s;
    }
    __syncthreads();
  }
  const OnlineLse<A> total{m[0], s[0]};
  __syncthreads();
  return total;
}

}  // namespace fastact
