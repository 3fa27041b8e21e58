// Op registration of the in-place row assignment of a resource variable.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lsh {

REGISTER_OP("TfLsh>ResourceAssignRows")
    .Input("var: resource")
    .Input("start: int64")
    .Input("values: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &unused));
      return c->WithRank(c->input(2), 2, &unused);
    })
    .Doc(R"doc(
Writes `values` [n, d] into rows [start, start + n) of the float32 variable `var` [rows, d], in
place. Unlike TensorFlow's sparse and sliced assignments, it leaves the variable out of
copy-on-read mode, where every later read copies the whole variable.
)doc");

}  // namespace tf_lsh
