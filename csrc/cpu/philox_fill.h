#pragma once
// Philox uniforms with AVX-512F, 32 per vector (philox_fill.cpp), for the CPU
// random kernels; fill_uniforms (launcher.h) is the portable form.
#include <cstdint>

namespace fastact {

// Whether fill_uniforms_avx512 may run here: the CPU has AVX-512F and
// FASTACT_HALF_CONVERT does not cap the CPU's vector level below it (the
// tests run each form on one machine).
bool fill_uniforms_vectorized();
// Draws index .. index + count - 1 of stream (seed, offset) into u, the
// numbers of fill_uniforms.
void fill_uniforms_avx512(uint64_t seed, uint64_t offset, int64_t index, int64_t count, float* u);

}  // namespace fastact
