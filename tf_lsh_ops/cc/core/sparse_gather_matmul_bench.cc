// Times the gather-matmul core on the Amazon-670K output-layer shape, without TensorFlow:
//   bazel run -c opt //tf_lsh_ops:sparse_gather_matmul_bench -- [threads]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sys/mman.h>
#include <vector>

#include "tf_lsh_ops/cc/core/bench_util.h"
#include "tf_lsh_ops/cc/core/row_groups.h"
#include "tf_lsh_ops/cc/core/shared_gather_matmul.h"
#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"
#include "tf_lsh_ops/cc/core/vector_kernels.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

// The per-example forward (no grouping), for comparison with the sorted-rows one.
void ForwardPerExample(const GatherMatmulShape& shape, const float* x, const float* w,
                       const float* bias, const int32_t* ids, float* out,
                       const ParallelFor& parallel_for) {
  parallel_for(shape.batch, 0, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int32_t* row = ids + b * shape.active;
      for (int64_t k = 0; k < shape.active; ++k) {
        if (k + 4 < shape.active) __builtin_prefetch(w + int64_t{row[k + 4]} * shape.dim);
        out[b * shape.active + k] = Dot(x + b * shape.dim, w + int64_t{row[k]} * shape.dim,
                                        shape.dim) + bias[row[k]];
      }
    }
  });
}

// What reading rows costs at all, the ceiling of any gather: the sum of each of `ids`' rows
// (in id order, prefetched as the op does), or of the whole matrix as one stream.
float SumRows(const float* w, int64_t dim, const std::vector<int32_t>& ids, const float* ones,
              const ParallelFor& parallel_for) {
  std::vector<float> partial(ids.size());
  parallel_for(ids.size(), 0, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (r + 8 < end) PrefetchRow(w + int64_t{ids[r + 8]} * dim, dim, false);
      if (r + 2 < end) PrefetchRow(w + int64_t{ids[r + 2]} * dim, dim, true);
      partial[r] = Dot(w + int64_t{ids[r]} * dim, ones, dim);
    }
  });
  return partial.empty() ? 0.f : partial[0];
}

float SumMatrix(const float* w, int64_t size, const float* ones, int64_t dim,
                const ParallelFor& parallel_for) {
  std::vector<float> partial(size / dim);
  parallel_for(size / dim, 0, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) partial[r] = Dot(w + r * dim, ones, dim);
  });
  return partial.empty() ? 0.f : partial[0];
}

}  // namespace
}  // namespace tf_lsh

int main(int argc, char** argv) {
  using namespace tf_lsh;
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const GatherMatmulShape shape{128, 128, 670091, 3000};
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int32_t> neuron(0, shape.num_neurons - 1);
  std::vector<float> x(shape.batch * shape.dim), w(shape.num_neurons * shape.dim),
      bias(shape.num_neurons), g(shape.batch * shape.active), out(shape.batch * shape.active);
  for (auto& v : x) v = normal(rng);
  for (auto& v : w) v = normal(rng);
  for (auto& v : g) v = normal(rng);
  std::vector<int32_t> ids(shape.batch * shape.active);
  for (auto& v : ids) v = neuron(rng);
  const ParallelFor parallel_for = ThreadsFor(threads);

  // The same weights on transparent huge pages (if the kernel grants them): fewer TLB misses
  // for rows scattered over hundreds of MB.
  const size_t huge = size_t{2} << 20;
  const size_t huge_bytes = (w.size() * sizeof(float) + huge - 1) / huge * huge;
  float* w_huge = static_cast<float*>(std::aligned_alloc(huge, huge_bytes));
  madvise(w_huge, huge_bytes, MADV_HUGEPAGE);
  std::copy(w.begin(), w.end(), w_huge);
  const double rows_ms = MedianMs([&] { ActiveRows rows(ids.data(), ids.size(), parallel_for); });
  const ActiveRows rows(ids.data(), ids.size(), parallel_for);
  // Grouping alone, into storage that is already allocated and touched (as the op's outputs
  // usually are: TensorFlow's allocator reuses them from step to step).
  std::vector<int32_t> group_ids(rows.size()), group_offsets(rows.size() + 1),
      group_positions(ids.size());
  const RowGroupAllocator preallocated{
      [&](int64_t, int32_t** positions) {
        *positions = group_positions.data();
        return true;
      },
      [&](int64_t, int32_t** ids, int32_t** offsets) {
        *ids = group_ids.data();
        *offsets = group_offsets.data();
        return true;
      }};
  const double group_ms = MedianMs([&] {
    RowGroups groups;
    GroupRows(ids.data(), ids.size(), shape.num_neurons, preallocated, parallel_for, &groups);
  });
  // What the forward op runs: the grouping with the product of each block of rows.
  const double group_and_multiply_ms = MedianMs([&] {
    RowGroups groups;
    GroupAndMultiply(shape, x.data(), w_huge, bias.data(), ids.data(), preallocated, out.data(),
                     parallel_for, &groups);
  });
  const double forward_ms = MedianMs([&] {
    SparseGatherMatmulForward(shape, x.data(), w.data(), bias.data(), rows.view(), out.data(),
                              parallel_for);
  });
  const double per_example_ms = MedianMs([&] {
    ForwardPerExample(shape, x.data(), w.data(), bias.data(), ids.data(), out.data(),
                      parallel_for);
  });
  const double sorted_again_ms = MedianMs([&] {
    SparseGatherMatmulForward(shape, x.data(), w.data(), bias.data(), rows.view(), out.data(),
                              parallel_for);
  });
  const double huge_forward_ms = MedianMs([&] {
    SparseGatherMatmulForward(shape, x.data(), w_huge, bias.data(), rows.view(), out.data(),
                              parallel_for);
  });
  std::fprintf(stderr, "forward on huge pages: %.2f ms\n", huge_forward_ms);
  std::vector<float> dx(shape.batch * shape.dim), dw(rows.size() * shape.dim), db(rows.size());
  const double backward_ms = MedianMs([&] {
    SparseGatherMatmulBackward(shape, x.data(), w.data(), g.data(), rows.view(), dx.data(),
                               dw.data(), db.data(), parallel_for);
  });
  // One active set shared by the batch (batch-wide selection): ids[0, active).
  const ActiveRows shared_rows(ids.data(), shape.active, parallel_for);
  const double shared_forward_ms = MedianMs([&] {
    SharedGatherMatmulForward(shape, x.data(), w_huge, bias.data(), ids.data(),
                              out.data(), parallel_for);
  });
  const double shared_backward_ms = MedianMs([&] {
    SharedGatherMatmulBackward(shape, x.data(), w_huge, g.data(), ids.data(),
                               shared_rows.view(), dx.data(), dw.data(), db.data(),
                               parallel_for);
  });
  const std::vector<float> ones(shape.dim, 1.f);
  const double read_rows_ms = MedianMs([&] {
    SumRows(w_huge, shape.dim, rows.ids(), ones.data(), parallel_for);
  });
  const double read_matrix_ms = MedianMs([&] {
    SumMatrix(w_huge, w.size(), ones.data(), shape.dim, parallel_for);
  });
  std::free(w_huge);
  const double row_gb = rows.size() * shape.dim * 4 / 1e9;
  std::printf(
      "{\"threads\": %d, \"unique_rows\": %lld, \"active_rows_ms\": %.2f, "
      "\"group_rows_ms\": %.2f, \"forward_ms\": %.2f, "
      "\"backward_ms\": %.2f, \"forward_row_gb_per_s\": %.1f, \"backward_gb_per_s\": %.1f, "
      "\"per_example_forward_ms\": %.2f, \"sorted_forward_again_ms\": %.2f, "
      "\"shared_forward_ms\": %.2f, \"shared_backward_ms\": %.2f, "
      "\"group_and_multiply_ms\": %.2f, \"group_and_multiply_gb_per_s\": %.1f, "
      "\"read_distinct_rows_ms\": %.2f, \"read_whole_matrix_ms\": %.2f}\n",
      threads, static_cast<long long>(rows.size()), rows_ms, group_ms, forward_ms, backward_ms,
      row_gb / (forward_ms / 1e3), 2 * row_gb / (backward_ms / 1e3), per_example_ms,
      sorted_again_ms, shared_forward_ms, shared_backward_ms, group_and_multiply_ms,
      ids.size() * shape.dim * 4 / 1e9 / (group_and_multiply_ms / 1e3), read_rows_ms,
      read_matrix_ms);
  return 0;
}
