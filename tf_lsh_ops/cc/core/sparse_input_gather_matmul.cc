#include "tf_lsh_ops/cc/core/sparse_input_gather_matmul.h"

#include <algorithm>
#include <cstring>

namespace tf_lsh {

void SparseInputGatherMatmulForward(const GatherMatmulShape& shape, const SparseRowsView& inputs,
                                    const float* weights, const float* biases,
                                    const int32_t* indices, float* out,
                                    const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active;
  const int64_t mean_nonzeros = 1 + inputs.row_offsets[shape.batch] / std::max<int64_t>(shape.batch, 1);
  parallel_for(shape.batch, active * (2 * mean_nonzeros + 10), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = inputs.row_offsets[b], last = inputs.row_offsets[b + 1];
      for (int64_t k = 0; k < active; ++k) {
        const int32_t id = indices[b * active + k];
        if (id < 0) {
          out[b * active + k] = 0.f;
          continue;
        }
        const float* w = weights + int64_t{id} * dim;
        float sum = biases[id];
        for (int64_t j = first; j < last; ++j) sum += inputs.values[j] * w[inputs.features[j]];
        out[b * active + k] = sum;
      }
    }
  });
}

void SparseInputGatherMatmulBackward(const GatherMatmulShape& shape,
                                     const SparseRowsView& inputs, const float* weights,
                                     const int32_t* indices, const float* grad_out,
                                     const RowGroups& rows, float* grad_values,
                                     float* grad_weight_rows, float* grad_bias_rows,
                                     const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active;
  // grad_values: each entry is owned by its example, so examples run in parallel.
  parallel_for(shape.batch, active * 8, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = inputs.row_offsets[b], last = inputs.row_offsets[b + 1];
      for (int64_t j = first; j < last; ++j) grad_values[j] = 0.f;
      for (int64_t k = 0; k < active; ++k) {
        const int32_t id = indices[b * active + k];
        if (id < 0) continue;
        const float g = grad_out[b * active + k];
        const float* w = weights + int64_t{id} * dim;
        for (int64_t j = first; j < last; ++j) grad_values[j] += g * w[inputs.features[j]];
      }
    }
  });
  // One gradient row per neuron, each written by one thread.
  parallel_for(rows.num_rows, 16 * dim, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* dw = grad_weight_rows + r * dim;
      std::memset(dw, 0, dim * sizeof(float));
      float db = 0.f;
      for (int32_t p = rows.offsets[r]; p < rows.offsets[r + 1]; ++p) {
        const int64_t position = rows.positions[p];
        const int64_t b = position / active;
        const float g = grad_out[position];
        for (int64_t j = inputs.row_offsets[b]; j < inputs.row_offsets[b + 1]; ++j) {
          dw[inputs.features[j]] += g * inputs.values[j];
        }
        db += g;
      }
      grad_bias_rows[r] = db;
    }
  });
}

}  // namespace tf_lsh
