// Sparse gather-matmul for sparse inputs: the activations of the previous LSHDense layer arrive
// as (unit ids, values) per example, so no [batch, input_dim] tensor is ever formed.
//
//   out[b, k] = sum_j values[j] * weights[indices[b, k], features[j]] + biases[indices[b, k]]
//
// over the entries j of row b (CSR: row_offsets[b] .. row_offsets[b + 1]). Costs
// batch * active * nonzeros per row, not batch * active * dim. Here and in the other forward
// passes an entry whose value is 0 is skipped, not multiplied (a zero times an infinite
// weight adds nothing rather than NaN).
#ifndef TF_LSH_OPS_CC_CORE_SPARSE_INPUT_GATHER_MATMUL_H_
#define TF_LSH_OPS_CC_CORE_SPARSE_INPUT_GATHER_MATMUL_H_

#include <cstdint>

#include "tf_lsh_ops/cc/core/parallel.h"
#include "tf_lsh_ops/cc/core/row_groups.h"
#include "tf_lsh_ops/cc/core/sparse_adam.h"
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

// The products of the sparse inputs with every unit of a neuron-major [units, dim] kernel,
// without bias: out[b, u] = sum_j values[j] * weights[u, features[j]], [batch, units]; the same
// sums, in the same order, as SparseInputGatherMatmulForward with all units and zero biases.
// Unit-major: each kernel row is read once for the whole batch, where the example-major loop
// would stream the kernel from memory once per example.
void SparseInputProducts(int64_t batch, int64_t units, int64_t dim, const SparseRowsView& inputs,
                         const float* weights, float* out, const ParallelFor& parallel_for);

// grad_values[j] = sum_k grad_out[b, k] * weights[indices[b, k], features[j]] (CSR order);
// for each row r of `rows`: grad_weight_rows[r, features[j]] += grad_out[b, k] * values[j] over
// its positions (b, k) and the entries j of row b, grad_bias_rows[r] = sum of grad_out[b, k].
// A zero grad_out[b, k] is skipped in grad_values (not multiplied), as zero values are in the
// forward passes.
void SparseInputGatherMatmulBackward(const GatherMatmulShape& shape,
                                     const SparseRowsView& inputs, const float* weights,
                                     const int32_t* indices, const float* grad_out,
                                     const RowGroups& rows, float* grad_values,
                                     float* grad_weight_rows, float* grad_bias_rows,
                                     const ParallelFor& parallel_for);

// SparseInputGatherMatmulBackward with the weights' gradient going straight into lazy Adam,
// weight by weight, in place: grad_values and grad_bias_rows as there (grad_values from the
// weights before the update). Then each weight (ids[r], f) of a row r of `rows` whose feature f
// is present with a nonzero value in one of the row's examples gets
//   g = sum of grad_out[b, k] * values[j] over the row's positions (b, k) and row b's entries j
//       of feature f
// and one Adam step (sparse_adam.h) on it and its moments. All other weights and moments keep
// their bits: lazy Adam per weight rather than per row, so that a step costs the batch's
// (active unit, nonzero input) pairs, not active units x dim. Each row is written by one
// thread, its features in increasing order: deterministic for any thread count.
void SparseInputGatherMatmulBackwardLazyAdam(const GatherMatmulShape& shape,
                                             const SparseRowsView& inputs,
                                             const int32_t* indices, const float* grad_out,
                                             const RowGroups& rows,
                                             const AdamHyperparameters& hyper,
                                             const AdamState& weights, float* grad_values,
                                             float* grad_bias_rows,
                                             const ParallelFor& parallel_for);

// The same backward pass with plain SGD per weight instead of Adam: each weight (ids[r], f)
// with a gradient g as above gets weights[ids[r], f] -= learning_rate * g, and no state
// besides the weights is kept (a wide layer's Adam moments are twice its kernel).
void SparseInputGatherMatmulBackwardLazySgd(const GatherMatmulShape& shape,
                                            const SparseRowsView& inputs, const int32_t* indices,
                                            const float* grad_out, const RowGroups& rows,
                                            float learning_rate, float* weights,
                                            float* grad_values, float* grad_bias_rows,
                                            const ParallelFor& parallel_for);

// SparseInputGatherMatmulBackwardLazySgd the Hogwild way (as SLIDE updates): examples are
// split between threads, and each, position by position, reads a weight for its values'
// gradient and writes it updated at once, unsynchronised and without grouping by row: one
// pass over the weights instead of two. An example's values' gradient sees the updates of the
// examples before it (in its thread) and, racily, of other threads'; two threads updating one
// weight at once may lose an update. So results depend on the order and vary from run to run;
// on one thread, examples in order, they are sequential SGD's. grad_bias_rows as in the
// grouped pass.
void SparseInputGatherMatmulBackwardHogwildSgd(const GatherMatmulShape& shape,
                                               const SparseRowsView& inputs,
                                               const int32_t* indices, const float* grad_out,
                                               const RowGroups& rows, float learning_rate,
                                               float* weights, float* grad_values,
                                               float* grad_bias_rows,
                                               const ParallelFor& parallel_for);

// The plain product of sparse inputs [batch, num_features] (CSR) and a dense kernel
// [num_features, units], feature-major (a first layer over a bag of words):
//   out[b, :] = sum over row b's entries j of values[j] * kernel[features[j], :].
// Reads only the kernel rows of the features present.
void SparseInputMatmulForward(int64_t batch, int64_t units, const SparseRowsView& inputs,
                              const float* kernel, float* out, const ParallelFor& parallel_for);

// Its gradients: grad_values[j] = kernel[features[j], :] . grad_out[b, :] for the entries j of
// row b; and, for each row r of `features` (the entries grouped by feature; positions are CSR
// entry numbers), grad_kernel_rows[r, :] = sum of values[j] * grad_out[b of j, :] over its
// entries, summed in entry order. grad_values may be null: it is then not computed.
void SparseInputMatmulBackward(int64_t batch, int64_t units, const SparseRowsView& inputs,
                               const float* kernel, const float* grad_out,
                               const RowGroups& features, float* grad_values,
                               float* grad_kernel_rows, const ParallelFor& parallel_for);

// The kernel's gradient rows of SparseInputMatmulBackward fused with the lazy Adam update of
// those rows (sparse_adam.h): each row's gradient goes from L1 straight into the update of the
// kernel and its moments, instead of being written out and read back by the optimizer. The
// same result, bit for bit, as SparseInputMatmulBackward followed by SparseAdamApply on its
// (sorted, distinct) rows; deterministic for any thread count. kernel.m may be null (beta1 = 0,
// see AdamState).
void SparseInputMatmulBackwardAdam(int64_t batch, int64_t units, const SparseRowsView& inputs,
                                   const float* grad_out, const RowGroups& features,
                                   const AdamHyperparameters& hyper, const AdamState& kernel,
                                   const ParallelFor& parallel_for);

// The same with lazy rowwise RMSprop (sparse_adam.h) on the kernel's rows, whose second
// moments are kernel_v [num_features]: bit for bit SparseInputMatmulBackward followed by
// SparseRowwiseRmspropApply.
void SparseInputMatmulBackwardRowwiseRmsprop(int64_t batch, int64_t units,
                                             const SparseRowsView& inputs, const float* grad_out,
                                             const RowGroups& features,
                                             const RowwiseRmspropHyperparameters& hyper,
                                             float* kernel, float* kernel_v,
                                             const ParallelFor& parallel_for);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_SPARSE_INPUT_GATHER_MATMUL_H_
