// Op registrations and shape functions for hashing, table build/update and query.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_lsh_ops/cc/ops/shape_checks.h"

namespace tf_lsh {

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

namespace {

// The attrs that fix a hash family's layout, shared by the hash ops.
#define TF_LSH_HASH_ATTRS                  \
  Attr("num_tables: int >= 1")             \
      .Attr("num_hashes: int >= 1")

absl::Status HashShape(InferenceContext* c, const char* op, bool sparse) {
  int64_t num_tables;
  TF_RETURN_IF_ERROR(c->GetAttr("num_tables", &num_tables));
  if (sparse) {
    ShapeHandle indices, values, dense_shape;
    TF_RETURN_IF_ERROR(WithRankNamed(c, op, 0, "sparse_indices", 2, &indices));
    TF_RETURN_IF_ERROR(WithRankNamed(c, op, 1, "sparse_values", 1, &values));
    TF_RETURN_IF_ERROR(WithRankNamed(c, op, 2, "dense_shape", 1, &dense_shape));
    c->set_output(0, c->Matrix(c->UnknownDim(), num_tables));
  } else {
    ShapeHandle inputs;
    TF_RETURN_IF_ERROR(WithRankNamed(c, op, 0, "inputs", 2, &inputs));
    c->set_output(0, c->Matrix(c->Dim(inputs, 0), num_tables));
  }
  return absl::OkStatus();
}

absl::Status ResourceHashShape(InferenceContext* c) {
  int64_t num_tables;
  TF_RETURN_IF_ERROR(c->GetAttr("num_tables", &num_tables));
  c->set_output(0, c->Matrix(c->UnknownDim(), num_tables));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("TfLsh>LshSrpProjections")
    .Input("seed: int64")
    .Output("projections: float")
    .Attr("dim: int >= 1")
    .Attr("total_hashes: int >= 1")
    .Attr("density: float = 1.0")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      int64_t dim, total;
      TF_RETURN_IF_ERROR(c->GetAttr("dim", &dim));
      TF_RETURN_IF_ERROR(c->GetAttr("total_hashes", &total));
      c->set_output(0, c->Matrix(dim, total));
      return absl::OkStatus();
    })
    .Doc("Signed-random-projection matrix [dim, total_hashes] from a seed.");

REGISTER_OP("TfLsh>LshWtaBins")
    .Input("seed: int64")
    .Output("bins: int32")
    .Attr("dim: int >= 1")
    .Attr("total_hashes: int >= 1")
    .Attr("bin_size: int >= 2")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      int64_t total, bin_size;
      TF_RETURN_IF_ERROR(c->GetAttr("total_hashes", &total));
      TF_RETURN_IF_ERROR(c->GetAttr("bin_size", &bin_size));
      c->set_output(0, c->Matrix(total, bin_size));
      return absl::OkStatus();
    })
    .Doc("Winner-take-all bins [total_hashes, bin_size] of coordinates, from a seed.");

REGISTER_OP("TfLsh>LshSrpHash")
    .Input("inputs: float")
    .Input("projections: float")
    .Input("max_norm: float")
    .Output("codes: int32")
    .TF_LSH_HASH_ATTRS
    .Attr("mips: {'none', 'data', 'query'} = 'none'")
    .SetShapeFn([](InferenceContext* c) { return HashShape(c, "LshSrpHash", false); })
    .Doc("SimHash bucket ids [batch, num_tables] of dense inputs.");

REGISTER_OP("TfLsh>LshSrpHashSparse")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("projections: float")
    .Input("max_norm: float")
    .Output("codes: int32")
    .TF_LSH_HASH_ATTRS
    .Attr("mips: {'none', 'data', 'query'} = 'none'")
    .SetShapeFn([](InferenceContext* c) { return HashShape(c, "LshSrpHashSparse", true); })
    .Doc("SimHash bucket ids [batch, num_tables] of a 2-D SparseTensor.");

REGISTER_OP("TfLsh>LshWtaHash")
    .Input("inputs: float")
    .Input("bins: int32")
    .Output("codes: int32")
    .TF_LSH_HASH_ATTRS
    .Attr("densified: bool = true")
    .SetShapeFn([](InferenceContext* c) { return HashShape(c, "LshWtaHash", false); })
    .Doc("(Densified) winner-take-all bucket ids [batch, num_tables] of dense inputs.");

REGISTER_OP("TfLsh>LshWtaHashSparse")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("bins: int32")
    .Output("codes: int32")
    .TF_LSH_HASH_ATTRS
    .Attr("densified: bool = true")
    .SetShapeFn([](InferenceContext* c) { return HashShape(c, "LshWtaHashSparse", true); })
    .Doc("(Densified) winner-take-all bucket ids [batch, num_tables] of a 2-D SparseTensor.");

// The dense hash ops reading a variable's rows in place (no copy, even in copy-on-read mode):
// a table rebuild hashes every unit of a weight matrix.
REGISTER_OP("TfLsh>ResourceLshSrpHash")
    .Input("inputs: resource")
    .Input("projections: float")
    .Input("max_norm: float")
    .Output("codes: int32")
    .TF_LSH_HASH_ATTRS
    .Attr("mips: {'none', 'data', 'query'} = 'none'")
    .SetShapeFn(ResourceHashShape)
    .Doc("LshSrpHash of the rows of a float32 resource variable, read in place.");

REGISTER_OP("TfLsh>ResourceLshWtaHash")
    .Input("inputs: resource")
    .Input("bins: int32")
    .Output("codes: int32")
    .TF_LSH_HASH_ATTRS
    .Attr("densified: bool = true")
    .SetShapeFn(ResourceHashShape)
    .Doc("LshWtaHash of the rows of a float32 resource variable, read in place.");

REGISTER_OP("TfLsh>LshBuildTables")
    .Input("codes: int32")
    .Input("seed: int64")
    .Output("table_ids: int32")
    .Output("table_counts: int32")
    .Attr("bucket_bits: int >= 1")
    .Attr("capacity: int >= 1")
    .Attr("overflow: {'fifo', 'reservoir'} = 'fifo'")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      ShapeHandle codes;
      TF_RETURN_IF_ERROR(WithRankNamed(c, "LshBuildTables", 0, "codes", 2, &codes));
      int64_t bits, capacity;
      TF_RETURN_IF_ERROR(c->GetAttr("bucket_bits", &bits));
      TF_RETURN_IF_ERROR(c->GetAttr("capacity", &capacity));
      if (bits > 30) {
        return absl::InvalidArgumentError(
            absl::StrCat("LshBuildTables: bucket_bits must be at most 30, got ", bits));
      }
      const DimensionHandle tables = c->Dim(codes, 1);
      c->set_output(0, c->MakeShape({tables, c->MakeDim(int64_t{1} << bits),
                                     c->MakeDim(capacity)}));
      c->set_output(1, c->MakeShape({tables, c->MakeDim(int64_t{1} << bits)}));
      return absl::OkStatus();
    })
    .Doc("Hash tables of neurons from their codes [num_neurons, num_tables].");

REGISTER_OP("TfLsh>LshUpdateTables")
    .Input("table_ids: int32")
    .Input("table_counts: int32")
    .Input("neuron_ids: int32")
    .Input("old_codes: int32")
    .Input("new_codes: int32")
    .Input("seed: int64")
    .Output("updated_ids: int32")
    .Output("updated_counts: int32")
    .Attr("overflow: {'fifo', 'reservoir'} = 'fifo'")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      ShapeHandle ids, counts, neurons, old_codes, new_codes;
      constexpr char kOp[] = "LshUpdateTables";
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "table_ids", 3, &ids));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "table_counts", 2, &counts));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 2, "neuron_ids", 1, &neurons));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 3, "old_codes", 2, &old_codes));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 4, "new_codes", 2, &new_codes));
      c->set_output(0, ids);
      c->set_output(1, counts);
      return absl::OkStatus();
    })
    .Doc("Moves the given neurons from their old buckets to their new ones.");

// Fingerprints of a weight matrix's rows, to find the neurons whose weights changed since
// they were hashed (core/row_fingerprints.h); the Resource op reads a variable in place.
REGISTER_OP("TfLsh>LshRowFingerprints")
    .Input("weights: float")
    .Output("fingerprints: int64")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      ShapeHandle weights;
      TF_RETURN_IF_ERROR(WithRankNamed(c, "LshRowFingerprints", 0, "weights", 2, &weights));
      c->set_output(0, c->Vector(c->Dim(weights, 0)));
      return absl::OkStatus();
    })
    .Doc("A 64-bit fingerprint of each row of weights [rows, dim] (its bytes hashed).");

REGISTER_OP("TfLsh>ResourceLshRowFingerprints")
    .Input("weights: resource")
    .Output("fingerprints: int64")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      c->set_output(0, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    })
    .Doc("LshRowFingerprints of a float32 resource variable, read in place.");

REGISTER_OP("TfLsh>LshQuery")
    .Input("codes: int32")
    .Input("table_ids: int32")
    .Input("table_counts: int32")
    .Input("labels: int32")
    .Input("seed: int64")
    .Output("active: int32")
    .Attr("k: int >= 1")
    .Attr("num_neurons: int >= 1")
    .Attr("rule: {'frequency', 'union', 'threshold'} = 'frequency'")
    .Attr("min_count: int >= 1 = 1")
    .Attr("fill_random: bool = false")
    .Attr("batch_wide: bool = false")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      constexpr char kOp[] = "LshQuery";
      ShapeHandle codes, ids, counts, labels;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "codes", 2, &codes));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "table_ids", 3, &ids));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 2, "table_counts", 2, &counts));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 3, "labels", 2, &labels));
      DimensionHandle unused;
      TF_RETURN_IF_ERROR(MergeNamed(c, kOp, codes, 1, "codes", ids, 0, "table_ids", &unused));
      int64_t k, num_neurons;
      bool batch_wide;
      TF_RETURN_IF_ERROR(c->GetAttr("k", &k));
      TF_RETURN_IF_ERROR(c->GetAttr("num_neurons", &num_neurons));
      TF_RETURN_IF_ERROR(c->GetAttr("batch_wide", &batch_wide));
      if (k > num_neurons) {
        return absl::InvalidArgumentError(absl::StrCat(
            kOp, ": k = ", k, " is larger than num_neurons = ", num_neurons));
      }
      c->set_output(0, c->Matrix(batch_wide ? c->MakeDim(1) : c->Dim(codes, 0), k));
      return absl::OkStatus();
    })
    .Doc("Active neuron ids [batch, k] (or [1, k] batch-wide) of queries hashed to codes.");

}  // namespace tf_lsh
