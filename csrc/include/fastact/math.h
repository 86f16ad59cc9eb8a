#pragma once
// Elementary functions used by the activation functors, for float and double.
//
// On the host the CPU kernels are plain loops over these scalar functions; to
// make them SIMD we declare the libm functions `omp declare simd`, which lets
// GCC call glibc's vector variants (libmvec, e.g. _ZGVdN8v_expf) from the
// vectorized loop. glibc >= 2.22 has exp/log, >= 2.35 also expm1, log1p, tanh
// and erf. The vector variants keep IEEE special values (inf, nan) and are
// accurate to a few ulp. setup.py defines FASTACT_USE_LIBMVEC only when it
// found libmvec to link against; without it the loops stay correct, scalar.
#include <cmath>
#include "fastact/macros.h"

#if !defined(__CUDACC__) && defined(FASTACT_USE_LIBMVEC) && defined(__GLIBC__) && \
    defined(__x86_64__) && defined(_OPENMP)
#define FA_SIMD_DECL _Pragma("omp declare simd notinbranch")
extern "C" {
FA_SIMD_DECL float expf(float);
FA_SIMD_DECL double exp(double);
FA_SIMD_DECL float logf(float);
FA_SIMD_DECL double log(double);
#if __GLIBC_PREREQ(2, 35)
FA_SIMD_DECL float expm1f(float);
FA_SIMD_DECL double expm1(double);
FA_SIMD_DECL float log1pf(float);
FA_SIMD_DECL double log1p(double);
FA_SIMD_DECL float tanhf(float);
FA_SIMD_DECL double tanh(double);
FA_SIMD_DECL float erff(float);
FA_SIMD_DECL double erf(double);
#endif
}
#undef FA_SIMD_DECL
#endif

// The device branch below is what nvcc compiles, and what the emulation lane
// (FASTACT_CUDA_EMULATION: the CUDA sources built by the host compiler) runs
// too, through the same calls (::erff, ::expf) with the host's libm behind
// them, so the lane tests the code a GPU runs; only the device libm's own
// rounding goes unexecuted there.
#if defined(__CUDACC__) || defined(FASTACT_CUDA_EMULATION)
#define FA_DEVICE_MATH 1
#endif

namespace fastact::math {

FA_HD float exp(float x) { return ::expf(x); }
FA_HD double exp(double x) { return ::exp(x); }
FA_HD float log(float x) { return ::logf(x); }
FA_HD double log(double x) { return ::log(x); }
FA_HD float expm1(float x) { return ::expm1f(x); }
FA_HD double expm1(double x) { return ::expm1(x); }
FA_HD float log1p(float x) { return ::log1pf(x); }
FA_HD double log1p(double x) { return ::log1p(x); }
FA_HD float tanh(float x) { return ::tanhf(x); }
FA_HD double tanh(double x) { return ::tanh(x); }
#if defined(FA_DEVICE_MATH)
FA_HD float erf(float x) { return ::erff(x); }
#else
// On the host (the CPU kernels), float erf is a rational function of x on [-4, 4] (Eigen's
// generic_fast_erf_float; |error| <= 4.5e-7, below torch's own gelu error
// except far below -3, where 1 + erf cancels in every form): a dozen FMAs
// and a division that vectorize inline, where libmvec's erff is a call that
// costs about twice as much. erf(+-inf) = +-1, NaN propagates (the clamp's
// comparisons are false for it), erf(-0) = -0.
inline float erf(float x) {
  const float c = x < -4.f ? -4.f : (x > 4.f ? 4.f : x);
  const float x2 = c * c;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return c * p / q;
}
#endif
FA_HD double erf(double x) { return ::erf(x); }

// exp(x) for the terms exp(z - max) of a softmax, logsumexp or cross-entropy
// (x <= 0; correct up to x = 88). On the host: Cody-Waite reduction x = n ln2
// + r and Cephes' degree-7 polynomial for exp(r), scaled by 2^n through the
// exponent bits (|error| <= 1.4 ulp, measured against float64 over [-87, 0]):
// plain multiplies and adds that vectorize inline, 1.7x faster than libmvec's
// expf call in a row sum (AVX-512; no FMA needed, the split of ln2 keeps
// n * ln2_hi exact). Results below FLT_MIN (x < -87.3) are 0 instead of
// subnormal: next to the sum's exp(0) = 1 they are far below its ulp. NaN
// propagates (x - max of an infinite max).
#if defined(FA_DEVICE_MATH)
FA_HD float exp_nonpositive(float x) { return ::expf(x); }
#else
inline float exp_nonpositive(float x) {
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round(x / ln2) (|x| < 2^22)
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = (p * r) * r + r + 1.f;
  int bits = (static_cast<int>(n) + 127) << 23;  // 2^n (n in [-126, 128] where used)
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return x < -87.3f ? 0.f : y * scale;
}
#endif
FA_HD double exp_nonpositive(double x) { return ::exp(x); }
FA_HD float abs(float x) { return ::fabsf(x); }
FA_HD double abs(double x) { return ::fabs(x); }

// std::max/std::min argument order: a NaN in `a` propagates, as in ATen's
// scalar kernels (std::max(nan, 0) is nan, std::min(nan, 6) is nan).
template <class T> FA_HD T max_nan(T a, T b) { return a < b ? b : a; }
template <class T> FA_HD T min_nan(T a, T b) { return b < a ? b : a; }

}  // namespace fastact::math
