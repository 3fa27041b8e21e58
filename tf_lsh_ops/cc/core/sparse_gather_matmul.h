// Sparse gather-matmul: each example multiplies its input by a few rows of a weight matrix.
//
// Shapes: inputs [batch, dim]; weights [num_neurons, dim], neuron-major; biases [num_neurons];
// indices [batch, active], each entry a neuron id or -1 ("no neuron": output 0, no gradient).
//
//   out[b, k] = dot(inputs[b], weights[indices[b, k]]) + biases[indices[b, k]]
//
// Example (batch 1, two active neurons out of three):
//   float x[2] = {1, 2};  float w[6] = {1, 0, 0, 1, 1, 1};  float bias[3] = {0, 0, 5};
//   int32_t ids[2] = {2, -1};  float out[2];
//   SparseGatherMatmulForward({1, 2, 3, 2}, x, w, bias, ActiveRows(ids, 2).view(), out,
//                             SerialFor());
//   // out = {8, 0}
//
// These are the per-example kernels: the grouping by neuron they walk is in row_groups.h, the
// path for one active set shared by the whole batch in shared_gather_matmul.h.
#ifndef TF_LSH_OPS_CC_CORE_SPARSE_GATHER_MATMUL_H_
#define TF_LSH_OPS_CC_CORE_SPARSE_GATHER_MATMUL_H_

#include <cstdint>

#include "tf_lsh_ops/cc/core/parallel.h"
#include "tf_lsh_ops/cc/core/row_groups.h"
#include "tf_lsh_ops/cc/core/sparse_adam.h"

namespace tf_lsh {

struct GatherMatmulShape {
  int64_t batch;
  int64_t dim;
  int64_t num_neurons;
  int64_t active;
};

// `rows` must group `indices`; positions absent from it (-1 ids) get output 0.
void SparseGatherMatmulForward(const GatherMatmulShape& shape, const float* inputs,
                               const float* weights, const float* biases, const RowGroups& rows,
                               float* out, const ParallelFor& parallel_for);

// GroupRows of `indices` [batch, active] and SparseGatherMatmulForward in one pass: each block
// of rows is multiplied as soon as it is grouped, while its positions are in cache. Returns
// false if `allocate` failed.
bool GroupAndMultiply(const GatherMatmulShape& shape, const float* inputs, const float* weights,
                      const float* biases, const int32_t* indices,
                      const RowGroupAllocator& allocate, float* out,
                      const ParallelFor& parallel_for, RowGroups* groups);

// Gradients of SparseGatherMatmulForward given grad_out [batch, active]:
//   grad_inputs [batch, dim] (dense), and for each row r of `rows`:
//   grad_weight_rows[r] = sum of grad_out[b, k] * inputs[b] over the positions of r,
//   grad_bias_rows[r] = sum of grad_out[b, k] over the positions of r.
// Rows are processed in a fixed number of blocks with their own grad_inputs accumulators,
// summed in block order, so results do not depend on the number of threads.
void SparseGatherMatmulBackward(const GatherMatmulShape& shape, const float* inputs,
                                const float* weights, const float* grad_out,
                                const RowGroups& rows, float* grad_inputs,
                                float* grad_weight_rows, float* grad_bias_rows,
                                const ParallelFor& parallel_for);

// Lazy Adam (sparse_adam.h) on a layer's weights [num_neurons, dim] and biases [num_neurons];
// without first moments (null m) when beta1 = 0.
struct AdamTarget {
  AdamHyperparameters hyper;
  AdamState weights;
  AdamState biases;
};

// SparseGatherMatmulBackward fused with the lazy Adam update of the rows it touches: each
// row's gradient goes from L1 straight into the update of the weights, biases and moments,
// instead of being written out and read back by the optimizer. grad_inputs uses the weights
// before the update. The same result, bit for bit, as SparseGatherMatmulBackward followed by
// SparseAdamApply on its (sorted, distinct) rows; deterministic for any thread count.
void SparseGatherMatmulBackwardAdam(const GatherMatmulShape& shape, const float* inputs,
                                    const float* grad_out, const RowGroups& rows,
                                    const AdamTarget& adam, float* grad_inputs,
                                    const ParallelFor& parallel_for);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_SPARSE_GATHER_MATMUL_H_
