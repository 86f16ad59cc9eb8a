// The C++ library's test: a LibTorch program calls fastact ops through the
// dispatcher and compares them with torch's own functions.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

namespace {

int failures = 0;

void expect_close(const char* what, const at::Tensor& a, const at::Tensor& b) {
  const bool ok = at::allclose(a, b, 1e-5, 1e-6, /*equal_nan=*/true);
  std::printf("%-40s %s\n", what, ok ? "ok" : "MISMATCH");
  if (!ok) ++failures;
}

}  // namespace

int main() {
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
