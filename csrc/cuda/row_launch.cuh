#pragma once
// How the row kernels (softmax, log_softmax and their backward, the
// cross-entropy forward and backward) cover [rows, C], chosen on the host:
//   - short rows (at most kMaxLaneVectors 16-byte vectors per lane of a
//     warp): a group of 4 to 32 lanes per row, kRowThreads / lanes rows per
//     block, reductions by shuffles alone (no block barrier), so a row of 16
//     classes keeps 4 lanes busy instead of 256 threads mostly idle;
//   - longer rows: a block per row, or, when rows are too few to fill the
//     GPU, a block per span of a row (a first kernel folds each span into a
//     partial, the second merges the row's partials and finishes the span);
//   - the class-index backward, an elementwise pass once the row's lse is
//     known, always takes spans of a few vector steps per thread.
// The emulation lane's tests read the plan of any shape (row_plan below)
// and check it against the launches at shapes small enough to run.
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>

#include "cuda/block_reduce.cuh"
#include "cuda/launcher.cuh"

namespace fastact {

constexpr int64_t kMaxLaneVectors = 16;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Spans of at least `min_span` columns (a multiple of the vector width), as
// many per row as it takes to give the GPU `target_blocks` blocks.
inline int64_t span_for(int64_t rows, int64_t C, int64_t min_span, int64_t target_blocks, int vec) {
  if (C == 0) return 1;  // one empty span per row: lse = -inf, as on the CPU
  const int64_t wanted = std::max<int64_t>(1, ceil_div(target_blocks, std::max<int64_t>(rows, 1)));
  int64_t splits = std::min(wanted, std::max<int64_t>(1, C / min_span));
  splits = std::min<int64_t>(splits, 65535);
  int64_t span = ceil_div(ceil_div(C, splits), vec) * vec;
  while (ceil_div(C, span) > 65535) span *= 2;  // grid.y limit
  return std::max<int64_t>(span, 1);
}

inline int64_t gpu_blocks() { return max_resident_blocks() / 2; }  // SMs x 8 blocks of 256 threads

// Whether a kernel's long rows are split only to fill the GPU (a pass with a
// row reduction) or always into spans (the elementwise class-index backward).
enum class RowSplit { kToFill, kAlways };

struct RowPlan {
  int lanes;       // threads per row: 4, 8, 16 or 32 lanes of a warp, or kRowThreads
  int64_t span;    // columns per block (C when rows are not split)
  int64_t splits;  // blocks per row
  Dim grid;        // (blocks of rows, splits), blocks of kRowThreads threads
};

// The plan for rows of C elements of elem_size bytes (by the dtype's vector
// width, whether or not the operands allow vector loads).
inline RowPlan row_plan(RowSplit split, int64_t rows, int64_t C, int elem_size) {
  const int vec = 16 / elem_size;
  const int64_t vectors = ceil_div(C, vec);
  if (vectors <= 32 * kMaxLaneVectors) {
    int lanes = 4;
    while (lanes < 32 && lanes < vectors) lanes *= 2;
    return {lanes, C, 1, Dim(ceil_div(rows, kRowThreads / lanes))};
  }
  // a block's span: at least 4 vector steps per thread
  const int64_t min_span = int64_t{kRowThreads} * vec * 4;
  int64_t span;
  if (split == RowSplit::kAlways) {
    span = ceil_div(std::max(min_span, ceil_div(C, 65535)), vec) * vec;
  } else {
    span = span_for(rows, C, min_span, gpu_blocks(), vec);
  }
  const int64_t splits = ceil_div(C, span);
  return {kRowThreads, span, splits, Dim(rows, splits)};
}

// Room for one partial P per span of split rows (none when rows are not
// split), kept alive by `keep`.
template <class P>
P* row_partials(const RowPlan& plan, int64_t rows, const at::Tensor& like, at::Tensor& keep) {
  if (plan.splits == 1) return nullptr;
  keep = at::empty({rows * plan.splits * static_cast<int64_t>(sizeof(P))}, like.options().dtype(at::kByte));
  return reinterpret_cast<P*>(keep.mutable_data_ptr());
}

// Calls f(RowTeam<lanes>{}).
template <class F>
void with_row_team(int lanes, F&& f) {
  switch (lanes) {
    case 4:
      return f(RowTeam<4>{});
    case 8:
      return f(RowTeam<8>{});
    case 16:
      return f(RowTeam<16>{});
    case 32:
      return f(RowTeam<32>{});
    default:
      return f(BlockTeam{});
  }
}

// The row a thread works on and the columns [lo, hi) its block covers: a
// row past the end (in the last block of lane groups) gets row 0 and an
// empty span, so its lanes still take part in their warp's shuffles.
struct RowSpan {
  int64_t row, lo, hi;
  bool live;
};

template <class Team>
__device__ __forceinline__ RowSpan row_span(int64_t rows, int64_t C, int64_t span) {
  const int64_t r = Team::row();
  const int64_t lo = static_cast<int64_t>(blockIdx.y) * span;
  if (r >= rows) return {0, lo, lo, false};
  return {r, lo, lo + span < C ? lo + span : C, true};
}

}  // namespace fastact
