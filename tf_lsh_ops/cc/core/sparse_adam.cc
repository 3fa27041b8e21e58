#include "tf_lsh_ops/cc/core/sparse_adam.h"

#include <cmath>
#include <vector>

#include "tf_lsh_ops/cc/core/row_groups.h"
#include "tf_lsh_ops/cc/core/vector_kernels.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {

namespace {

// The update of one row, given its (summed) gradient g.
inline void AdamRow(const AdamHyperparameters& hyper, int64_t dim, const float* g, float* w,
                    float* m, float* v) {
  AdamUpdate(hyper.alpha, hyper.beta1, hyper.beta2, hyper.epsilon, g, w, m, v, dim);
}

bool StrictlyIncreasing(const int32_t* indices, int64_t count) {
  for (int64_t i = 1; i < count; ++i) {
    if (indices[i] <= indices[i - 1]) return false;
  }
  return true;
}

// Calls `update(row, g)` once per distinct row of `indices`, g its summed gradient, each row
// on one thread; `prefetch(row)` runs kAdamRowsAhead rows ahead.
template <typename Prefetch, typename Update>
void ForEachDistinctRow(int64_t dim, const int32_t* indices, const float* grad, int64_t count,
                        const ParallelFor& parallel_for, int64_t cost_per_row,
                        const Prefetch& prefetch, const Update& update) {
  if (StrictlyIncreasing(indices, count)) {
    // Distinct and sorted, as sparse_gather_matmul's gradients are: no grouping needed.
    parallel_for(count, cost_per_row, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (i + kAdamRowsAhead < end) prefetch(indices[i + kAdamRowsAhead]);
        update(int64_t{indices[i]}, grad + i * dim);
      }
    });
    return;
  }
  // Groups duplicate rows, sorted by row so that the updates stream through memory.
  const ActiveRows rows(indices, count, parallel_for);
  const std::vector<int32_t>& ids = rows.ids();
  const std::vector<int32_t>& offsets = rows.offsets();
  const std::vector<int32_t>& positions = rows.positions();
  parallel_for(rows.size(), cost_per_row, [&](int64_t begin, int64_t end) {
    std::vector<float> summed(dim);
    for (int64_t r = begin; r < end; ++r) {
      if (r + kAdamRowsAhead < end) prefetch(ids[r + kAdamRowsAhead]);
      const float* g = grad + int64_t{positions[offsets[r]]} * dim;
      if (offsets[r + 1] - offsets[r] > 1) {
        for (int64_t d = 0; d < dim; ++d) summed[d] = g[d];
        for (int64_t j = offsets[r] + 1; j < offsets[r + 1]; ++j) {
          const float* more = grad + int64_t{positions[j]} * dim;
          for (int64_t d = 0; d < dim; ++d) summed[d] += more[d];
        }
        g = summed.data();
      }
      update(int64_t{ids[r]}, g);
    }
  });
}

}  // namespace

void SparseAdamApply(const AdamHyperparameters& hyper, int64_t dim, const int32_t* indices,
                     const float* grad, int64_t count, float* var, float* m, float* v,
                     const ParallelFor& parallel_for) {
  const AdamState state{var, m, v};
  ForEachDistinctRow(
      dim, indices, grad, count, parallel_for, 12 * dim,
      [&](int64_t row) { PrefetchAdamRow(state, row, dim); },
      [&](int64_t row, const float* g) {
        const int64_t base = row * dim;
        AdamRow(hyper, dim, g, var + base, MomentAt(m, base), v + base);
      });
}

void RowwiseRmspropRow(const RowwiseRmspropHyperparameters& hyper, int64_t dim, const float* g,
                       float* w, float* v) {
  const float mean_square = dim > 0 ? Dot(g, g, dim) / static_cast<float>(dim) : 0.f;
  *v += (mean_square - *v) * (1.f - hyper.beta2);
  Axpy(-hyper.alpha / (std::sqrt(*v) + hyper.epsilon), g, w, dim);
}

void SparseRowwiseRmspropApply(const RowwiseRmspropHyperparameters& hyper, int64_t dim,
                               const int32_t* indices, const float* grad, int64_t count,
                               float* var, float* v, const ParallelFor& parallel_for) {
  ForEachDistinctRow(
      dim, indices, grad, count, parallel_for, 6 * dim,
      [&](int64_t row) { PrefetchRowForWrite(var + row * dim, dim); },
      [&](int64_t row, const float* g) {
        RowwiseRmspropRow(hyper, dim, g, var + row * dim, v + row);
      });
}

}  // namespace tf_lsh
