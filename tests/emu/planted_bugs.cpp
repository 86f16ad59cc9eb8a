// Small copies of the CUDA kernels' building blocks (csrc/cuda/block_reduce.cuh,
// launcher.cuh), each also with a planted bug, run on the SIMT emulator of
// csrc/emu. tests/test_emulation.py builds this program and checks that every
// correct version passes in every thread order and every planted bug is
// caught: by a wrong result in some order, by an emulator error, or (a read
// past the end of a buffer) by AddressSanitizer.
//
//   planted_bugs            runs every in-process case, one line each:
//                           CASE <name> <correct|bug> <pass|caught|missed> <detail>
//   planted_bugs overrun    the vector-body overrun alone (AddressSanitizer aborts)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "emu/simt.h"

using fastact::gload;
using fastact::gstore;
namespace emu = fastact::emu;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct alignas(16) Vec4 {
  float v[4];
};

// ---- block reduction (block_reduce.cuh): bug 1 drops the barrier that
// publishes the warp sums, bug 2 stops the shuffle tree one step early.
template <int kBug>
float warp_sum(float v) {
  for (int o = 16; o > (kBug == 2 ? 1 : 0); o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int kBug>
float block_sum(float v) {
  FA_SHARED(float, s, kWarps);
  v = warp_sum<kBug>(v);
  if (threadIdx.x % 32 == 0) s[threadIdx.x / 32] = v;
  if (kBug != 1) __syncthreads();
  float total = 0;
  for (int i = 0; i < kWarps; ++i) total += s[i];
  __syncthreads();
  return total;
}

template <int kBug>
__global__ void __launch_bounds__(kThreads) row_sum_kernel(const float* x, float* out, int64_t n) {
  float part = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) part += gload(x + blockIdx.x * n + i);
  const float total = block_sum<kBug>(part);
  if (threadIdx.x == 0) gstore(out + blockIdx.x, total);
}

// ---- lane-group rows (RowTeam<8> of block_reduce.cuh): 8 lanes per row,
// 32 rows per block, summed by xor shuffles of width 8. The bug starts the
// tree at offset 8, so each group adds its neighbour group's row.
template <int kBug>
__global__ void __launch_bounds__(kThreads) group_row_sum_kernel(const float* x, float* out, int64_t rows,
                                                                 int64_t n) {
  constexpr int kLanes = 8;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / kLanes) + threadIdx.x / kLanes;
  float v = 0;
  if (r < rows)
    for (int64_t i = threadIdx.x % kLanes; i < n; i += kLanes) v += gload(x + r * n + i);
  for (int o = kBug == 1 ? kLanes : kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, kLanes);
  if (r < rows && threadIdx.x % kLanes == 0) gstore(out + r, v);
}

// A barrier that only some threads reach.
__global__ void __launch_bounds__(kThreads) divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 64) __syncthreads();
  gstore(out + threadIdx.x, 1.0f);
}

// ---- a row walk with 128-bit loads (for_each_in_span): a scalar head to the
// first 16-byte boundary, vectors, a scalar tail. Bug 1: the tail stops one
// element short. Bug 2: the vector body runs one vector past the end. Bug 3:
// the head ignores the row's misalignment, so the vectors are misaligned.
template <int kBug>
__global__ void __launch_bounds__(kThreads) scale_kernel(const float* x, float* y, int64_t n) {
  constexpr int64_t VEC = 4;
  const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(x) % 16) / sizeof(float);
  const int64_t head = kBug == 3 ? 0 : std::min<int64_t>(mis ? VEC - mis : 0, n);
  const int64_t body = head + (n - head) / VEC * VEC + (kBug == 2 ? VEC : 0);
  const int64_t tid = threadIdx.x, nt = blockDim.x;
  for (int64_t c = tid; c < head; c += nt) gstore(y + c, 2 * gload(x + c));
  for (int64_t c = head + tid * VEC; c < body; c += nt * VEC) {
    Vec4 v = gload(reinterpret_cast<const Vec4*>(x + c));
    for (float& e : v.v) e *= 2;
    gstore(reinterpret_cast<Vec4*>(y + c), v);
  }
  for (int64_t c = body + tid; c < n - (kBug == 1 ? 1 : 0); c += nt) gstore(y + c, 2 * gload(x + c));
}

__global__ void __launch_bounds__(kThreads) assert_kernel(const int64_t* target, int64_t classes) {
  const int64_t t = gload(target + threadIdx.x);
  FA_DEVICE_ASSERT(t >= 0 && t < classes, "target out of bounds");
}

namespace {

const emu::LaunchBounds bounds[] = {{"row_sum_kernel", kThreads},
                                    {"group_row_sum_kernel", kThreads},
                                    {"divergent_barrier_kernel", kThreads},
                                    {"scale_kernel", kThreads},
                                    {"assert_kernel", kThreads}};

const char* kOrders[] = {"forward", "reverse", "shuffled"};

void report(const char* name, bool planted, bool ok, const std::string& detail) {
  const char* result = planted ? (ok ? "missed" : "caught") : (ok ? "pass" : "fail");
  std::printf("CASE %s %s %s %s\n", name, planted ? "bug" : "correct", result, detail.c_str());
}

// Runs f() in each thread order; ok when every order gives the right answer
// (f returns an empty string) and no error is thrown.
template <class F>
void in_every_order(const char* name, bool planted, F&& f) {
  std::string detail;
  bool ok = true;
  for (int order = 1; order <= 3; ++order) {
    fastact_emu_configure(8, order, 12345);
    try {
      const std::string wrong = f();
      if (!wrong.empty()) {
        ok = false;
        detail += std::string(kOrders[order - 1]) + ": " + wrong + "; ";
      }
    } catch (const emu::Error& e) {
      ok = false;
      detail += std::string(kOrders[order - 1]) + ": " + e.what() + "; ";
    }
  }
  fastact_emu_configure(8, 0, 0x5eed);
  report(name, planted, ok, detail.empty() ? "right in every order" : detail);
}

// Expects launch() to throw the emulator's error.
template <class F>
void expect_error(const char* name, F&& launch) {
  try {
    launch();
    report(name, true, true, "no error");
  } catch (const emu::Error& e) {
    report(name, true, false, e.what());
  }
}

template <int kBug>
std::string run_row_sum(int rows, int64_t n, int threads = kThreads) {
  std::vector<float> x(rows * n), out(rows, -1.0f);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7) - 3.0f;
  emu::launch({"row_sum_kernel", dim3(rows), dim3(threads), 0}, row_sum_kernel<kBug>, x.data(), out.data(), n);
  for (int r = 0; r < rows; ++r) {
    float want = 0;
    for (int64_t i = 0; i < n; ++i) want += x[r * n + i];
    if (out[r] != want) return "row " + std::to_string(r) + " sum " + std::to_string(out[r]) + " != " + std::to_string(want);
  }
  return "";
}

// Rows past `rows` in the last block: their lanes still shuffle.
template <int kBug>
std::string run_group_row_sum(int64_t rows, int64_t n) {
  std::vector<float> x(rows * n), out(rows, -1.0f);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7) - 3.0f;
  emu::launch({"group_row_sum_kernel", dim3((rows + 31) / 32), dim3(kThreads), 0}, group_row_sum_kernel<kBug>,
              x.data(), out.data(), rows, n);
  for (int64_t r = 0; r < rows; ++r) {
    float want = 0;
    for (int64_t i = 0; i < n; ++i) want += x[r * n + i];
    if (out[r] != want) return "row " + std::to_string(r) + " sum " + std::to_string(out[r]) + " != " + std::to_string(want);
  }
  return "";
}

// y = 2 x over n floats starting `offset` floats past a 16-byte boundary.
template <int kBug>
std::string run_scale(int64_t n, int offset) {
  std::vector<float> xs(n + offset), ys(n + offset, -1.0f);
  for (int64_t i = 0; i < n + offset; ++i) xs[i] = static_cast<float>(i);
  const float* x = xs.data() + offset;
  float* y = ys.data() + offset;
  emu::launch({"scale_kernel", dim3(1), dim3(kThreads), 0}, scale_kernel<kBug>, x, y, n);
  for (int64_t i = 0; i < n; ++i)
    if (y[i] != 2 * x[i]) return "element " + std::to_string(i) + " of " + std::to_string(n) + " not written";
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "overrun") == 0) {
    // exactly n floats on the heap: the overrun reads past the allocation
    const int64_t n = 1003;
    float* x = new float[n];
    float* y = new float[n];
    std::fill(x, x + n, 1.0f);
    emu::launch({"scale_kernel", dim3(1), dim3(kThreads), 0}, scale_kernel<2>, x, y, n);
    std::printf("overrun not detected\n");
    delete[] x;
    delete[] y;
    return 0;
  }
  in_every_order("block_sum", false, [] { return run_row_sum<0>(3, 1000); });
  in_every_order("block_sum_missing_syncthreads", true, [] { return run_row_sum<1>(3, 1000); });
  in_every_order("warp_sum_wrong_shuffle_offset", true, [] { return run_row_sum<2>(3, 1000); });
  in_every_order("group_sum", false, [] { return run_group_row_sum<0>(45, 13); });
  in_every_order("group_sum_crosses_groups", true, [] { return run_group_row_sum<1>(45, 13); });
  in_every_order("vector_walk", false, [] {
    for (int offset = 0; offset < 4; ++offset)
      for (int64_t n : {1, 3, 4, 5, 1000, 1003}) {
        const std::string wrong = run_scale<0>(n, offset);
        if (!wrong.empty()) return wrong;
      }
    return std::string();
  });
  in_every_order("vector_tail_off_by_one", true, [] { return run_scale<1>(1003, 0); });
  in_every_order("vector_head_ignores_misalignment", true, [] { return run_scale<3>(1003, 1); });
  in_every_order("divergent_syncthreads", true, [] {
    std::vector<float> out(kThreads);
    emu::launch({"divergent_barrier_kernel", dim3(1), dim3(kThreads), 0}, divergent_barrier_kernel, out.data());
    return std::string();
  });
  in_every_order("block_not_a_multiple_of_32", true, [] { return run_row_sum<0>(1, 1000, 200); });
  expect_error("over_launch_bounds", [] { run_row_sum<0>(1, 1000, 512); });
  expect_error("over_1024_threads", [] { run_row_sum<0>(1, 1000, 2048); });
  expect_error("grid_y_over_65535", [] {
    std::vector<float> x(4), y(4);
    emu::launch({"scale_kernel", dim3(1, 70000), dim3(kThreads), 0}, scale_kernel<0>, x.data(), y.data(),
                int64_t{4});
  });
  expect_error("empty_grid", [] {
    std::vector<float> x(4), y(4);
    emu::launch({"scale_kernel", dim3(0), dim3(kThreads), 0}, scale_kernel<0>, x.data(), y.data(), int64_t{4});
  });
  expect_error("device_assert", [] {
    std::vector<int64_t> target(kThreads, 1);
    target[77] = 1000;
    emu::launch({"assert_kernel", dim3(1), dim3(kThreads), 0}, assert_kernel, target.data(), int64_t{10});
  });
  return 0;
}
