// Grouping an index matrix by neuron, so that the gather-matmul kernels walk the weight matrix
// in id order: each neuron's (example, slot) positions, neurons sorted by id.
//
// Example:
//   int32_t ids[4] = {2, -1, 0, 2};  // [batch 2, active 2]; -1 is padding
//   ActiveRows rows(ids, 4);
//   // rows.ids() = {0, 2}, rows.offsets() = {0, 1, 3}, rows.positions() = {2, 0, 3}
#ifndef TF_LSH_OPS_CC_CORE_ROW_GROUPS_H_
#define TF_LSH_OPS_CC_CORE_ROW_GROUPS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tf_lsh_ops/cc/core/parallel.h"

namespace tf_lsh {

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

// Calls `visit` on the rows of a finished grouping, in parallel runs of consecutive rows.
void VisitRows(const RowGroups& groups, const RowVisitor& visit, const ParallelFor& parallel_for);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_ROW_GROUPS_H_
