// Sparse gather-matmul for sparse inputs: the activations of the previous LSHDense layer arrive
// as (unit ids, values) per example, so no [batch, input_dim] tensor is ever formed.
//
//   out[b, k] = sum_j values[j] * weights[indices[b, k], features[j]] + biases[indices[b, k]]
//
// over the entries j of row b (CSR: row_offsets[b] .. row_offsets[b + 1]). Costs
// batch * active * nonzeros per row, not batch * active * dim.
#ifndef TF_LSH_OPS_CC_CORE_SPARSE_INPUT_GATHER_MATMUL_H_
#define TF_LSH_OPS_CC_CORE_SPARSE_INPUT_GATHER_MATMUL_H_

#include <cstdint>

#include "tf_lsh_ops/cc/core/parallel.h"
#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"

namespace tf_lsh {

struct SparseRowsView {
  const int64_t* row_offsets;  // batch + 1
  const int64_t* features;     // in [0, dim)
  const float* values;
};

void SparseInputGatherMatmulForward(const GatherMatmulShape& shape, const SparseRowsView& inputs,
                                    const float* weights, const float* biases,
                                    const int32_t* indices, float* out,
                                    const ParallelFor& parallel_for);

// grad_values[j] = sum_k grad_out[b, k] * weights[indices[b, k], features[j]] (CSR order);
// for each row r of `rows`: grad_weight_rows[r, features[j]] += grad_out[b, k] * values[j] over
// its positions (b, k) and the entries j of row b, grad_bias_rows[r] = sum of grad_out[b, k].
void SparseInputGatherMatmulBackward(const GatherMatmulShape& shape,
                                     const SparseRowsView& inputs, const float* weights,
                                     const int32_t* indices, const float* grad_out,
                                     const RowGroups& rows, float* grad_values,
                                     float* grad_weight_rows, float* grad_bias_rows,
                                     const ParallelFor& parallel_for);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_SPARSE_INPUT_GATHER_MATMUL_H_
