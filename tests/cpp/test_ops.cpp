// The C++ library's test: a LibTorch program calls fastact ops through the
// dispatcher and compares them with torch's own functions.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <string>

#include "cpu/launcher.h"
#include "fastact/cross_entropy_ops.h"

namespace {

int failures = 0;

void expect_close(const char* what, const at::Tensor& a, const at::Tensor& b) {
  const bool ok = at::allclose(a, b, 1e-5, 1e-6, /*equal_nan=*/true);
  std::printf("%-40s %s\n", what, ok ? "ok" : "MISMATCH");
  if (!ok) ++failures;
}

void expect(const char* what, bool ok) {
  std::printf("%-40s %s\n", what, ok ? "ok" : "MISMATCH");
  if (!ok) ++failures;
}

// The online log-sum-exp the CUDA row kernels build on (host-testable: the
// same header code runs on the device): one value at a time, eight at a time,
// and split into parts that are merged, against a direct computation.
void test_online_lse() {
  using Lse = fastact::OnlineLse<double>;
  auto direct = [](const double* v, int n) {
    double m = -INFINITY, s = 0;
    for (int i = 0; i < n; ++i) m = v[i] > m ? v[i] : m;
    for (int i = 0; i < n; ++i) s += std::exp(v[i] - m);
    return m + std::log(s);
  };
  auto three_ways = [](const double (&v)[16]) {
    Lse one, eight, merged, part_a, part_b;
    for (double z : v) one.add(z);
    double lo[8], hi[8];
    std::copy(v, v + 8, lo);
    std::copy(v + 8, v + 16, hi);
    eight.add_all(lo);
    eight.add_all(hi);
    part_a.add_all(lo);
    part_b.add_all(hi);
    merged.merge(part_a);
    merged.merge(part_b);
    return std::array<double, 3>{one.value(), eight.value(), merged.value()};
  };
  double v[16];
  for (int i = 0; i < 16; ++i) v[i] = std::sin(i * 1.7) * 30;
  const double ref = direct(v, 16);
  auto r = three_ways(v);
  expect("online lse: add / add_all / merge", std::abs(r[0] - ref) < 1e-12 && std::abs(r[1] - ref) < 1e-12 &&
                                                  std::abs(r[2] - ref) < 1e-12);
  // masked (-inf) values first, including a whole part of them
  for (int i = 0; i < 9; ++i) v[i] = -INFINITY;
  const double masked = direct(v + 9, 7);
  r = three_ways(v);
  expect("online lse: leading -inf", std::abs(r[0] - masked) < 1e-12 && std::abs(r[1] - masked) < 1e-12 &&
                                         std::abs(r[2] - masked) < 1e-12);
  // a NaN, alone among -inf values, still makes every path NaN
  v[3] = NAN;
  r = three_ways(v);
  expect("online lse: NaN propagates", std::isnan(r[0]) && std::isnan(r[1]) && std::isnan(r[2]));
  for (double& z : v) z = -INFINITY;
  r = three_ways(v);
  expect("online lse: all -inf gives -inf", r[0] == -INFINITY && r[1] == -INFINITY && r[2] == -INFINITY);
  // a +inf value gives NaN on every path (torch: exp(inf - inf)), wherever it stands
  for (int at : {0, 5, 15}) {
    for (int i = 0; i < 16; ++i) v[i] = i < 9 ? -INFINITY : std::sin(i * 1.7);
    v[at] = INFINITY;
    r = three_ways(v);
    expect("online lse: +inf gives NaN", std::isnan(r[0]) && std::isnan(r[1]) && std::isnan(r[2]));
  }
}

// The float64 row lse split into hi + lo for the backward kernels: exact
// reconstruction, and lo = 0 for a non-finite lse.
void test_split_lse() {
  const double lse = -1e4 + std::log(100.0);
  const auto s = fastact::split_lse<float>(lse);
  expect("split_lse: hi + lo == lse", std::abs((static_cast<double>(s.hi) + s.lo) - lse) < 1e-9 &&
                                          s.hi == static_cast<float>(lse));
  const auto inf = fastact::split_lse<float>(-INFINITY);
  const auto nan = fastact::split_lse<float>(NAN);
  expect("split_lse: non-finite lse", inf.hi == -INFINITY && inf.lo == 0 && std::isnan(nan.hi) && nan.lo == 0);
}

// The CPU random kernels' AVX-512 Philox (cpu/philox_fill.cpp) against the
// portable fill_uniforms: aligned and misaligned starts, every block size,
// and runs whose counter groups straddle a 2^32 boundary (unreachable from
// Python: that needs 2^34 elements).
void test_vector_philox() {
  if (!fastact::fill_uniforms_vectorized()) {
    std::printf("%-40s %s\n", "vector philox", "skipped (no AVX-512F)");
    return;
  }
  bool ok = true;
  std::array<float, 1100> a{}, b{};
  const int64_t boundary = int64_t(4) << 32;  // draw index of counter group 2^32
  for (const int64_t start : {int64_t(0), int64_t(1), int64_t(3), boundary - 600, boundary - 64, boundary - 3,
                              boundary, boundary + 5})
    for (const int64_t count : {int64_t(1), int64_t(63), int64_t(64), int64_t(257), int64_t(1024), int64_t(1100)})
      for (const uint64_t offset : {uint64_t(0), uint64_t(1) << 40}) {
        fastact::fill_uniforms_avx512(0x0123456789ABCDEFull, offset, start, count, a.data());
        fastact::fill_uniforms(0x0123456789ABCDEFull, offset, start, count, b.data());
        ok = ok && std::equal(a.begin(), a.begin() + count, b.begin());
      }
  expect("vector philox = portable philox", ok);
}

// math::exp_nonpositive (the softmax / cross-entropy sums and gradients on
// the host) against float64 exp at every float in [-87.3, 0] one in 64 (2^28
// values): within 2 ulp of the float result's exponent range where the
// result is normal (measured max 1.4), 0 below FLT_MIN, exp(0) = 1, exp(-inf)
// = 0 and NaN kept.
void test_exp_nonpositive() {
  double worst = 0;
  for (uint32_t bits = 0x80000000u; bits <= 0xC2AE999Au; bits += 64) {  // -0 .. -87.3
    float x;
    std::memcpy(&x, &bits, sizeof x);
    const double ref = std::exp(static_cast<double>(x));
    if (ref < FLT_MIN) continue;
    const double ulp = std::ldexp(1.0, std::ilogb(ref) - 23);
    worst = std::max(worst, std::abs(fastact::math::exp_nonpositive(x) - ref) / ulp);
  }
  std::printf("%-40s max %.2f ulp\n", "exp_nonpositive accuracy", worst);
  expect("exp_nonpositive within 2 ulp", worst <= 2.0);
  expect("exp_nonpositive special values",
         fastact::math::exp_nonpositive(0.f) == 1.f && fastact::math::exp_nonpositive(-0.f) == 1.f &&
             fastact::math::exp_nonpositive(-INFINITY) == 0.f && fastact::math::exp_nonpositive(-90.f) == 0.f &&
             std::isnan(fastact::math::exp_nonpositive(NAN)));
}

}  // namespace

int main() {
  test_exp_nonpositive();
  test_online_lse();
  test_split_lse();
  test_vector_philox();
  auto& dispatcher = c10::Dispatcher::singleton();
  const at::Tensor x = torch::randn({1000, 37});
  const at::Tensor dy = torch::randn({1000, 37});

  auto gelu = dispatcher.findSchemaOrThrow("fastact::gelu", "").typed<at::Tensor(const at::Tensor&, c10::string_view)>();
  expect_close("gelu(x, 'none')", gelu.call(x, "none"), torch::gelu(x));
  expect_close("gelu(x, 'tanh')", gelu.call(x, "tanh"), torch::gelu(x, "tanh"));

  auto silu_bwd = dispatcher.findSchemaOrThrow("fastact::silu_backward", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  const at::Tensor xr = x.clone().requires_grad_(true);
  torch::silu(xr).backward(dy);
  expect_close("silu_backward(dy, x)", silu_bwd.call(dy, x), xr.grad());

  auto leaky = dispatcher.findSchemaOrThrow("fastact::leaky_relu", "")
                   .typed<at::Tensor(const at::Tensor&, double)>();
  expect_close("leaky_relu(x.t(), 0.2)", leaky.call(x.t(), 0.2), torch::leaky_relu(x.t(), 0.2));

  // cross-entropy is shift-invariant: a row of equal logits at -1e4 costs
  // exactly log(C), and its lse comes back in float64
  auto ce_rows = dispatcher.findSchemaOrThrow("fastact::cross_entropy_rows", "")
                     .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                               const std::optional<at::Tensor>&, int64_t, double,
                                                               double, double)>();
  const auto [ce_loss, ce_lse] =
      ce_rows.call(torch::full({3, 100}, -1e4), torch::tensor({0, 5, 99}, torch::kLong), std::nullopt, -100, 0.0,
                   0.0, 0.0);
  expect("cross_entropy rows at -1e4 give log(C)",
         ce_lse.scalar_type() == at::kDouble &&
             (ce_loss.to(at::kDouble) - std::log(100.0)).abs().max().item<double>() < 1e-6);

  bool raised = false;
  try {
    gelu.call(torch::ones({3}, torch::kLong), "none");
  } catch (const c10::Error& e) {
    raised = std::string(e.what()).find("fastact.gelu") != std::string::npos;
  }
  std::printf("%-40s %s\n", "integer input raises", raised ? "ok" : "MISSING");
  if (!raised) ++failures;

  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
