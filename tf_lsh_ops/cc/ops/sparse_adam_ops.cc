// Op registration of the fused lazy-Adam update on resource variables.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lsh {

REGISTER_OP("TfLsh>SparseAdamApply")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("indices: Tindices")
    .Input("grad: float")
    .Input("lr: float")
    .Input("beta1: float")
    .Input("beta2: float")
    .Input("epsilon: float")
    .Input("beta1_power: float")
    .Input("beta2_power: float")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext*) {
      return absl::OkStatus();
    })
    .Doc(R"doc(
Lazy Adam on the rows `indices` of var and its moments m and v, in place (see core/sparse_adam.h).
)doc");

REGISTER_OP("TfLsh>SparseAdamNoMomentumApply")
    .Input("var: resource")
    .Input("v: resource")
    .Input("indices: Tindices")
    .Input("grad: float")
    .Input("lr: float")
    .Input("beta2: float")
    .Input("epsilon: float")
    .Input("beta2_power: float")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext*) {
      return absl::OkStatus();
    })
    .Doc(R"doc(
SparseAdamApply with beta1 = 0 and no first moment kept (it would equal the gradient): lazy
Adam on the rows `indices` of var and v, in place (see core/sparse_adam.h).
)doc");

REGISTER_OP("TfLsh>SparseRowwiseRmspropApply")
    .Input("var: resource")
    .Input("v: resource")
    .Input("indices: Tindices")
    .Input("grad: float")
    .Input("lr: float")
    .Input("beta2: float")
    .Input("epsilon: float")
    .Input("beta2_power: float")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext*) {
      return absl::OkStatus();
    })
    .Doc(R"doc(
Lazy rowwise RMSprop on the rows `indices` of var, with one second moment per row in v, in
place (see core/sparse_adam.h).
)doc");

}  // namespace tf_lsh
