// Op registration of the fused active-set softmax cross-entropy (core/active_softmax.h).
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_lsh_ops/cc/ops/shape_checks.h"

namespace tf_lsh {

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("TfLsh>ActiveSoftmaxCrossEntropy")
    .Input("ids: int32")
    .Input("logits: float")
    .Input("labels: int32")
    .Output("loss: float")
    .Output("grad_logits: float")
    .SetShapeFn([](InferenceContext* c) {
      constexpr char kOp[] = "ActiveSoftmaxCrossEntropy";
      ShapeHandle ids, logits, labels, merged;
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
    })
    .Doc(R"doc(
Mean softmax cross-entropy over each example's active units (ids -1 excluded), with the labels
in the set as the target; also its gradient with respect to logits. ids is [batch, K], or
[1, K] for one active set shared by the batch.
)doc");

}  // namespace tf_lsh
