// Op registration of the batch gather of a multi-label sparse dataset (CSR arrays).
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_lsh_ops/cc/ops/shape_checks.h"

namespace tf_lsh {

using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("TfLsh>MultiLabelBatch")
    .Input("feature_splits: int64")
    .Input("feature_ids: int64")
    .Input("feature_values: float")
    .Input("label_splits: int64")
    .Input("label_ids: int32")
    .Input("rows: int64")
    .Attr("num_features: int >= 0")
    .Attr("max_labels: int >= 0")
    .Output("indices: int64")
    .Output("values: float")
    .Output("dense_shape: int64")
    .Output("labels: int32")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      constexpr char kOp[] = "MultiLabelBatch";
      const char* names[6] = {"feature_splits", "feature_ids", "feature_values",
                              "label_splits",   "label_ids",   "rows"};
      ShapeHandle rows;
      for (int i = 0; i < 6; ++i) TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, i, names[i], 1, &rows));
      int64_t max_labels;
      TF_RETURN_IF_ERROR(c->GetAttr("max_labels", &max_labels));
      c->set_output(0, c->Matrix(c->UnknownDim(), 2));
      c->set_output(1, c->Vector(c->UnknownDim()));
      c->set_output(2, c->Vector(2));
      c->set_output(3, c->Matrix(c->Dim(rows, 0), max_labels));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The examples `rows` of a multi-label dataset in CSR form (core/multi_label_batch.h): the
SparseTensor [len(rows), num_features] of their features and their labels [len(rows),
max_labels], -1 padded.
)doc");

}  // namespace tf_lsh
