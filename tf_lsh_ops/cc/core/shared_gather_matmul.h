// The sparse gather-matmul when the whole batch shares one active set (Mongoose-style
// batch-wide selection): gathered rows and dense blocked matrix multiplications.
#ifndef TF_LSH_OPS_CC_CORE_SHARED_GATHER_MATMUL_H_
#define TF_LSH_OPS_CC_CORE_SHARED_GATHER_MATMUL_H_

#include <cstdint>

#include "tf_lsh_ops/cc/core/parallel.h"
#include "tf_lsh_ops/cc/core/row_groups.h"
#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"

namespace tf_lsh {

// The same product when the whole batch shares one active set (Mongoose-style batch-wide
// selection): `ids` [active] replaces indices[b, :] for every b. The rows are gathered once
// and the products are dense blocked matrix multiplications (vector_ops.h MatMul).
void SharedGatherMatmulForward(const GatherMatmulShape& shape, const float* inputs,
                               const float* weights, const float* biases, const int32_t* ids,
                               float* out, const ParallelFor& parallel_for);

// Gradients of SharedGatherMatmulForward; `rows` groups `ids` (positions in [0, active)), and
// the outputs are as for SparseGatherMatmulBackward. Deterministic for any thread count.
void SharedGatherMatmulBackward(const GatherMatmulShape& shape, const float* inputs,
                                const float* weights, const float* grad_out, const int32_t* ids,
                                const RowGroups& rows, float* grad_inputs,
                                float* grad_weight_rows, float* grad_bias_rows,
                                const ParallelFor& parallel_for);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_SHARED_GATHER_MATMUL_H_
