// Op registration of the fused losses over active sets (core/active_losses.h).
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_lsh_ops/cc/ops/shape_checks.h"

namespace tf_lsh {

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// Both losses take and give the same tensors; errors name the op `kOp`.
template <const char* kOp>
absl::Status ActiveLossShape(InferenceContext* c) {
  ShapeHandle ids, logits, labels;
  TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "ids", 2, &ids));
  TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "logits", 2, &logits));
  TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 2, "labels", 2, &labels));
  DimensionHandle unused;
  if (!c->ValueKnown(c->Dim(ids, 0)) || c->Value(c->Dim(ids, 0)) != 1) {  // [1, K]: shared
    TF_RETURN_IF_ERROR(MergeNamed(c, kOp, ids, 0, "ids", logits, 0, "logits", &unused));
  }
  TF_RETURN_IF_ERROR(MergeNamed(c, kOp, ids, 1, "ids", logits, 1, "logits", &unused));
  TF_RETURN_IF_ERROR(MergeNamed(c, kOp, logits, 0, "logits", labels, 0, "labels", &unused));
  c->set_output(0, c->Scalar());
  c->set_output(1, logits);
  return absl::OkStatus();
}

constexpr char kSoftmaxOp[] = "ActiveSoftmaxCrossEntropy";
constexpr char kBinaryOp[] = "ActiveBinaryCrossEntropy";

REGISTER_OP("TfLsh>ActiveSoftmaxCrossEntropy")
    .Input("ids: int32")
    .Input("logits: float")
    .Input("labels: int32")
    .Output("loss: float")
    .Output("grad_logits: float")
    .SetShapeFn(ActiveLossShape<kSoftmaxOp>)
    .Doc(R"doc(
Mean softmax cross-entropy over each example's active units (ids -1 excluded), with the labels
in the set as the target; also its gradient with respect to logits. ids is [batch, K], or
[1, K] for one active set shared by the batch.
)doc");

REGISTER_OP("TfLsh>ActiveBinaryCrossEntropy")
    .Input("ids: int32")
    .Input("logits: float")
    .Input("labels: int32")
    .Output("loss: float")
    .Output("grad_logits: float")
    .SetShapeFn(ActiveLossShape<kBinaryOp>)
    .Doc(R"doc(
One-vs-rest over each example's active units (ids -1 excluded): the sum of a sigmoid
cross-entropy per unit, with the labels in the set as positives, divided by those labels,
averaged over the examples that have one; also its gradient with respect to logits. ids is
[batch, K], or [1, K] for one active set shared by the batch.
)doc");

}  // namespace tf_lsh
