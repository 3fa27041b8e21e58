// A 2-D SparseTensor op input (indices, values, dense_shape at inputs 0, 1, 2), checked and
// regrouped by row (CSR) for the core.
#ifndef TF_LSH_OPS_CC_KERNELS_SPARSE_INPUTS_H_
#define TF_LSH_OPS_CC_KERNELS_SPARSE_INPUTS_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/sparse_input_gather_matmul.h"
#include "tf_lsh_ops/cc/kernels/input_checks.h"

namespace tf_lsh {

using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

// A 2-D SparseTensor regrouped by row (CSR), after checking its indices.
struct SparseRows {
  int64_t batch = 0, dim = 0;
  Tensor row_offsets;  // int64 [batch + 1]; a temp tensor, so a huge batch fails cleanly
  std::vector<int64_t> feature_ids;
  std::vector<float> values;
  std::vector<int64_t> entries;  // the SparseTensor entry of each CSR slot
  const int64_t* offsets() const { return row_offsets.flat<int64_t>().data(); }
  // What the core reads (sparse_input_gather_matmul.h).
  SparseRowsView view() const { return {offsets(), feature_ids.data(), values.data()}; }
  // Values given per CSR slot, written back in the SparseTensor's entry order.
  void ToEntryOrder(const std::vector<float>& per_slot, float* per_entry) const {
    for (size_t slot = 0; slot < per_slot.size(); ++slot) per_entry[entries[slot]] = per_slot[slot];
  }
};

// Ops that take a SparseTensor take it first, as three inputs; their other inputs follow.
struct SparseTensorInput {
  enum : int { kIndices, kValues, kDenseShape, kNext };
};

// Checks the SparseTensor inputs and reads its dense shape, without allocating.
inline absl::Status CheckSparseInputs(const char* op, OpKernelContext* ctx, SparseRows* rows) {
  const Tensor& indices = ctx->input(SparseTensorInput::kIndices);
  const Tensor& values = ctx->input(SparseTensorInput::kValues);
  const Tensor& dense_shape = ctx->input(SparseTensorInput::kDenseShape);
  TF_RETURN_IF_ERROR(CheckRank(op, "sparse_indices", indices, 2));
  TF_RETURN_IF_ERROR(CheckRank(op, "sparse_values", values, 1));
  TF_RETURN_IF_ERROR(CheckRank(op, "dense_shape", dense_shape, 1));
  if (dense_shape.NumElements() != 2 || indices.dim_size(1) != 2 ||
      indices.dim_size(0) != values.dim_size(0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": inputs must be a 2-D SparseTensor; got indices ", indices.shape().DebugString(),
        ", values ", values.shape().DebugString(), ", dense_shape ",
        dense_shape.shape().DebugString()));
  }
  rows->batch = dense_shape.flat<int64_t>()(0);
  rows->dim = dense_shape.flat<int64_t>()(1);
  if (rows->batch < 0 || rows->dim < 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": dense_shape must be non-negative"));
  }
  const auto index = indices.matrix<int64_t>();
  for (int64_t i = 0; i < indices.dim_size(0); ++i) {
    if (index(i, 0) < 0 || index(i, 0) >= rows->batch || index(i, 1) < 0 ||
        index(i, 1) >= rows->dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": sparse index [", index(i, 0), ", ", index(i, 1), "] (entry ", i,
          ") is outside dense_shape [", rows->batch, ", ", rows->dim, "]"));
    }
  }
  return absl::OkStatus();
}

// Regroups the checked entries by row. Called once the output [batch, L] is allocated.
inline absl::Status GroupSparseRows(OpKernelContext* ctx, SparseRows* rows) {
  const auto index = ctx->input(SparseTensorInput::kIndices).matrix<int64_t>();
  const auto value = ctx->input(SparseTensorInput::kValues).flat<float>();
  const int64_t nnz = value.size();
  TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_INT64, TensorShape({rows->batch + 1}),
                                        &rows->row_offsets));
  int64_t* offsets = rows->row_offsets.flat<int64_t>().data();
  std::fill(offsets, offsets + rows->batch + 1, 0);
  for (int64_t i = 0; i < nnz; ++i) ++offsets[index(i, 0) + 1];
  for (int64_t b = 0; b < rows->batch; ++b) offsets[b + 1] += offsets[b];
  rows->feature_ids.resize(nnz);
  rows->values.resize(nnz);
  rows->entries.resize(nnz);
  // Placing an entry advances its row's offset; each ends at the next row's start...
  for (int64_t i = 0; i < nnz; ++i) {
    const int64_t slot = offsets[index(i, 0)]++;
    rows->feature_ids[slot] = index(i, 1);
    rows->values[slot] = value(i);
    rows->entries[slot] = i;
  }
  // ... and is shifted back.
  for (int64_t b = rows->batch; b > 0; --b) offsets[b] = offsets[b - 1];
  offsets[0] = 0;
  return absl::OkStatus();
}

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_KERNELS_SPARSE_INPUTS_H_
