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
#ifndef TF_LSH_OPS_CC_CORE_SPARSE_GATHER_MATMUL_H_
#define TF_LSH_OPS_CC_CORE_SPARSE_GATHER_MATMUL_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tf_lsh_ops/cc/core/parallel.h"
#include "tf_lsh_ops/cc/core/sparse_adam.h"

namespace tf_lsh {

struct GatherMatmulShape {
  int64_t batch;
  int64_t dim;
  int64_t num_neurons;
  int64_t active;
};

// Returns the flat position of the first index outside [-1, num_neurons), or -1 if none.
int64_t FindInvalidIndex(const int32_t* indices, int64_t count, int64_t num_neurons);

// The (example, slot) positions of an index matrix grouped by neuron, -1 entries skipped:
// row r is neuron ids[r], at flat positions b * active + k listed in
// positions[offsets[r] .. offsets[r + 1]). Rows are sorted by neuron id, so that walking them
// streams through the weight matrix; within a row, positions increase. A view over arrays
// owned by an ActiveRows or by tensors (the forward op hands its grouping to the gradient).
struct RowGroups {
  const int32_t* ids;
  const int32_t* offsets;    // num_rows + 1 entries
  const int32_t* positions;  // offsets[num_rows] entries
  int64_t num_rows;
};

// Where GroupRows writes a grouping, so that an op can write straight into its output tensors:
// `positions` is called first, for [num_positions] entries, then `rows`, for ids [num_rows] and
// offsets [num_rows + 1]. Each returns false if it could not allocate.
struct RowGroupAllocator {
  std::function<bool(int64_t num_positions, int32_t** positions)> positions;
  std::function<bool(int64_t num_rows, int32_t** ids, int32_t** offsets)> rows;
};

// Sees consecutive rows of a grouping as soon as they are grouped, from worker threads, each row
// once; the view is valid only during the call (its ids and offsets may be scratch).
using RowVisitor = std::function<void(const RowGroups& rows)>;

// Groups an index matrix by neuron: O(count) work and memory, plus O(num_neurons) when there are
// at most 4 neurons per entry. `indices` must hold only ids in [-1, num_neurons) (see
// FindInvalidIndex) and at most ActiveRows::kMaxPositions entries. If `visit` is set, it sees
// every row. Returns false if `allocate` failed.
bool GroupRows(const int32_t* indices, int64_t count, int64_t num_neurons,
               const RowGroupAllocator& allocate, const ParallelFor& parallel_for,
               RowGroups* groups, const RowVisitor& visit = nullptr);

// A grouping that owns its arrays.
class ActiveRows {
 public:
  // Positions and offsets are int32.
  static constexpr int64_t kMaxPositions = (int64_t{1} << 31) - 1;

  // Ids lie in [-1, num_neurons); by default num_neurons is the largest id + 1.
  ActiveRows(const int32_t* indices, int64_t count,
             const ParallelFor& parallel_for = SerialFor(), int64_t num_neurons = -1);

  int64_t size() const { return static_cast<int64_t>(ids_.size()); }
  const std::vector<int32_t>& ids() const { return ids_; }
  const std::vector<int32_t>& offsets() const { return offsets_; }
  const std::vector<int32_t>& positions() const { return positions_; }
  RowGroups view() const { return {ids_.data(), offsets_.data(), positions_.data(), size()}; }

 private:
  std::vector<int32_t> ids_;
  std::vector<int32_t> offsets_;
  std::vector<int32_t> positions_;
};

// Returns "" if `groups` is a well-formed grouping of `num_slots` = batch * active positions
// over neurons in [0, num_neurons), else what is wrong. For groupings that arrive as op
// inputs; O(rows + positions).
std::string CheckRowGroups(const RowGroups& groups, int64_t num_positions, int64_t num_neurons,
                           int64_t num_slots);

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

// Lazy Adam (sparse_adam.h) on a layer's weights [num_neurons, dim] and biases [num_neurons].
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

#endif  // TF_LSH_OPS_CC_CORE_SPARSE_GATHER_MATMUL_H_
