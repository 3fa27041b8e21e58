#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"

#include <algorithm>
#include <cstring>

#include "tf_lsh_ops/cc/core/id_map.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {

// How many rows ahead to prefetch: weight rows are scattered over a large matrix, so the
// gather is bound by memory latency, not by the multiply-adds.
constexpr int kPrefetchDistance = 4;

int64_t FindInvalidIndex(const int32_t* indices, int64_t count, int64_t num_neurons) {
  for (int64_t i = 0; i < count; ++i) {
    if (indices[i] < -1 || indices[i] >= num_neurons) return i;
  }
  return -1;
}

void SparseGatherMatmulForward(const GatherMatmulShape& shape, const float* inputs,
                               const float* weights, const float* biases, const int32_t* indices,
                               float* out, const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active;
  parallel_for(shape.batch, active * (2 * dim + 40), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* x = inputs + b * dim;
      const int32_t* ids = indices + b * active;
      float* y = out + b * active;
      for (int64_t k = 0; k < active; ++k) {
        if (k + kPrefetchDistance < active && ids[k + kPrefetchDistance] >= 0) {
          __builtin_prefetch(weights + ids[k + kPrefetchDistance] * dim);
        }
        const int32_t id = ids[k];
        y[k] = id < 0 ? 0.f : Dot(x, weights + static_cast<int64_t>(id) * dim, dim) + biases[id];
      }
    }
  });
}

ActiveRows::ActiveRows(const int32_t* indices, int64_t count) {
  IdMap row_of(count);
  std::vector<int32_t> row_at(count, -1);
  std::vector<int64_t> counts;
  for (int64_t i = 0; i < count; ++i) {
    if (indices[i] < 0) continue;
    const int32_t row = row_of.FindOrInsert(indices[i], static_cast<int32_t>(ids_.size()));
    if (row == static_cast<int32_t>(ids_.size())) {
      ids_.push_back(indices[i]);
      counts.push_back(0);
    }
    row_at[i] = row;
    ++counts[row];
  }
  offsets_.resize(ids_.size() + 1);
  offsets_[0] = 0;
  for (size_t r = 0; r < ids_.size(); ++r) offsets_[r + 1] = offsets_[r] + counts[r];
  positions_.resize(offsets_.back());
  std::vector<int64_t> next(offsets_.begin(), offsets_.end() - 1);
  for (int64_t i = 0; i < count; ++i) {
    if (row_at[i] >= 0) positions_[next[row_at[i]]++] = i;
  }
}

void SparseGatherMatmulBackward(const GatherMatmulShape& shape, const float* inputs,
                                const float* weights, const int32_t* indices,
                                const float* grad_out, const ActiveRows& rows,
                                float* grad_inputs, float* grad_weight_rows,
                                float* grad_bias_rows, const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active;
  // grad_inputs[b] = sum_k grad_out[b, k] * weights[indices[b, k]].
  parallel_for(shape.batch, active * (2 * dim + 40), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float* dx = grad_inputs + b * dim;
      std::memset(dx, 0, dim * sizeof(float));
      const int32_t* ids = indices + b * active;
      const float* g = grad_out + b * active;
      for (int64_t k = 0; k < active; ++k) {
        if (k + kPrefetchDistance < active && ids[k + kPrefetchDistance] >= 0) {
          __builtin_prefetch(weights + ids[k + kPrefetchDistance] * dim);
        }
        if (ids[k] >= 0) Axpy(g[k], weights + static_cast<int64_t>(ids[k]) * dim, dx, dim);
      }
    }
  });
  // One output row per neuron: duplicates within and across examples are summed here.
  const std::vector<int64_t>& offsets = rows.offsets();
  const std::vector<int64_t>& positions = rows.positions();
  const int64_t mean_uses = rows.size() > 0 ? 1 + static_cast<int64_t>(positions.size()) /
                                                      rows.size()
                                            : 1;
  parallel_for(rows.size(), mean_uses * (2 * dim + 10), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* dw = grad_weight_rows + r * dim;
      std::memset(dw, 0, dim * sizeof(float));
      float db = 0.f;
      for (int64_t j = offsets[r]; j < offsets[r + 1]; ++j) {
        const int64_t pos = positions[j];
        const float g = grad_out[pos];
        Axpy(g, inputs + (pos / active) * dim, dw, dim);
        db += g;
      }
      grad_bias_rows[r] = db;
    }
  });
}

}  // namespace tf_lsh
