// Op registrations and shape functions for the sparse gather-matmul and its gradient.
//
// The forward op also outputs how it grouped `indices` by neuron (rows, row_splits,
// positions: see RowGroups in core/row_groups.h), so that the gradient does not
// sort them again. The Python wrapper returns only `output`.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_lsh_ops/cc/ops/shape_checks.h"

namespace tf_lsh {

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

namespace {

// Checks the ranks and sizes that can be checked (weights and biases are unknown for the
// resource variants) and sets the outputs.
absl::Status ForwardShape(InferenceContext* c, const char* op, bool resource) {
  ShapeHandle inputs, indices;
  TF_RETURN_IF_ERROR(WithRankNamed(c, op, 0, "inputs", 2, &inputs));
  TF_RETURN_IF_ERROR(WithRankNamed(c, op, 3, "indices", 2, &indices));
  DimensionHandle unused;
  if (!resource) {
    ShapeHandle weights, biases;
    TF_RETURN_IF_ERROR(WithRankNamed(c, op, 1, "weights", 2, &weights));
    TF_RETURN_IF_ERROR(WithRankNamed(c, op, 2, "biases", 1, &biases));
    TF_RETURN_IF_ERROR(MergeNamed(c, op, inputs, 1, "inputs", weights, 1, "weights", &unused));
    TF_RETURN_IF_ERROR(MergeNamed(c, op, weights, 0, "weights", biases, 0, "biases", &unused));
  }
  // indices is [batch, active], or [1, active]: one active set for the whole batch.
  const DimensionHandle indices_batch = c->Dim(indices, 0);
  if (!c->ValueKnown(indices_batch) || c->Value(indices_batch) != 1) {
    TF_RETURN_IF_ERROR(MergeNamed(c, op, inputs, 0, "inputs", indices, 0, "indices", &unused));
  }
  c->set_output(0, c->Matrix(c->Dim(inputs, 0), c->Dim(indices, 1)));
  c->set_output(1, c->Vector(c->UnknownDim()));
  c->set_output(2, c->Vector(c->UnknownDim()));
  c->set_output(3, c->Vector(c->UnknownDim()));
  return absl::OkStatus();
}

absl::Status GradShape(InferenceContext* c, const char* op, bool resource) {
  ShapeHandle inputs, rows, grad_output, indices;
  TF_RETURN_IF_ERROR(WithRankNamed(c, op, 0, "inputs", 2, &inputs));
  TF_RETURN_IF_ERROR(WithRankNamed(c, op, 2, "rows", 1, &rows));
  TF_RETURN_IF_ERROR(WithRankNamed(c, op, 5, "grad_output", 2, &grad_output));
  TF_RETURN_IF_ERROR(WithRankNamed(c, op, 6, "indices", 2, &indices));
  DimensionHandle dim = c->Dim(inputs, 1);
  if (!resource) {
    ShapeHandle weights;
    TF_RETURN_IF_ERROR(WithRankNamed(c, op, 1, "weights", 2, &weights));
    TF_RETURN_IF_ERROR(MergeNamed(c, op, inputs, 1, "inputs", weights, 1, "weights", &dim));
  }
  c->set_output(0, inputs);
  c->set_output(1, c->Matrix(c->Dim(rows, 0), dim));
  c->set_output(2, c->Vector(c->Dim(rows, 0)));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("TfLsh>SparseGatherMatmul")
    .Input("inputs: float")
    .Input("weights: float")
    .Input("biases: float")
    .Input("indices: int32")
    .Output("output: float")
    .Output("rows: int32")
    .Output("row_splits: int32")
    .Output("positions: int32")
    .SetShapeFn([](InferenceContext* c) { return ForwardShape(c, "SparseGatherMatmul", false); })
    .Doc(R"doc(
out[b, k] = dot(inputs[b], weights[indices[b, k]]) + biases[indices[b, k]]; index -1 gives 0.
indices [1, K] is one active set for every example. Also outputs the grouping of `indices` by
neuron, for the gradient.
)doc");

REGISTER_OP("TfLsh>SparseGatherMatmulGrad")
    .Input("inputs: float")
    .Input("weights: float")
    .Input("rows: int32")
    .Input("row_splits: int32")
    .Input("positions: int32")
    .Input("grad_output: float")
    .Input("indices: int32")
    .Output("grad_inputs: float")
    .Output("grad_weight_rows: float")
    .Output("grad_bias_rows: float")
    .SetShapeFn([](InferenceContext* c) { return GradShape(c, "SparseGatherMatmulGrad", false); })
    .Doc(R"doc(
Gradient of SparseGatherMatmul, from its grouping of the indices (and the indices, whose shape
tells a shared active set): dense grad_inputs, and one row of weight and bias gradients per
distinct neuron (`rows`, sorted).
)doc");

// The same ops reading weights and biases from resource variables in place (no copy, even in
// copy-on-read mode); their gradients are IndexedSlices for the variables.
REGISTER_OP("TfLsh>ResourceSparseGatherMatmul")
    .Input("inputs: float")
    .Input("weights: resource")
    .Input("biases: resource")
    .Input("indices: int32")
    .Output("output: float")
    .Output("rows: int32")
    .Output("row_splits: int32")
    .Output("positions: int32")
    .SetShapeFn([](InferenceContext* c) {
      return ForwardShape(c, "ResourceSparseGatherMatmul", true);
    })
    .Doc("SparseGatherMatmul with weights and biases read from resource variables.");

REGISTER_OP("TfLsh>ResourceSparseGatherMatmulGrad")
    .Input("inputs: float")
    .Input("weights: resource")
    .Input("rows: int32")
    .Input("row_splits: int32")
    .Input("positions: int32")
    .Input("grad_output: float")
    .Input("indices: int32")
    .Output("grad_inputs: float")
    .Output("grad_weight_rows: float")
    .Output("grad_bias_rows: float")
    .SetShapeFn([](InferenceContext* c) {
      return GradShape(c, "ResourceSparseGatherMatmulGrad", true);
    })
    .Doc("Gradient of ResourceSparseGatherMatmul.");

// The gradient fused with the optimizer: lazy Adam on the touched rows of the variables and of
// their moments, in place (core SparseGatherMatmulBackwardAdam). Only grad_inputs comes out.
REGISTER_OP("TfLsh>ResourceSparseGatherMatmulGradAdam")
    .Input("inputs: float")
    .Input("weights: resource")
    .Input("biases: resource")
    .Input("weights_m: resource")
    .Input("weights_v: resource")
    .Input("biases_m: resource")
    .Input("biases_v: resource")
    .Input("rows: int32")
    .Input("row_splits: int32")
    .Input("positions: int32")
    .Input("grad_output: float")
    .Input("indices: int32")
    .Input("lr: float")
    .Input("beta1: float")
    .Input("beta2: float")
    .Input("epsilon: float")
    .Input("beta1_power: float")
    .Input("beta2_power: float")
    .Output("grad_inputs: float")
    .SetShapeFn([](InferenceContext* c) {
      constexpr char kOp[] = "ResourceSparseGatherMatmulGradAdam";
      ShapeHandle inputs, unused;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "inputs", 2, &inputs));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 10, "grad_output", 2, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 11, "indices", 2, &unused));
      c->set_output(0, inputs);
      return absl::OkStatus();
    })
    .Doc(R"doc(
ResourceSparseGatherMatmulGrad fused with lazy Adam: updates the touched rows of weights,
biases and their moments in place and returns grad_inputs (computed with the weights before
the update).
)doc");

// The same with beta1 = 0 and no first moments kept (they would equal the gradients).
REGISTER_OP("TfLsh>ResourceSparseGatherMatmulGradAdamNoMomentum")
    .Input("inputs: float")
    .Input("weights: resource")
    .Input("biases: resource")
    .Input("weights_v: resource")
    .Input("biases_v: resource")
    .Input("rows: int32")
    .Input("row_splits: int32")
    .Input("positions: int32")
    .Input("grad_output: float")
    .Input("indices: int32")
    .Input("lr: float")
    .Input("beta2: float")
    .Input("epsilon: float")
    .Input("beta2_power: float")
    .Output("grad_inputs: float")
    .SetShapeFn([](InferenceContext* c) {
      constexpr char kOp[] = "ResourceSparseGatherMatmulGradAdamNoMomentum";
      ShapeHandle inputs, unused;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "inputs", 2, &inputs));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 8, "grad_output", 2, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 9, "indices", 2, &unused));
      c->set_output(0, inputs);
      return absl::OkStatus();
    })
    .Doc(R"doc(
ResourceSparseGatherMatmulGradAdam with beta1 = 0 and no first moments: updates the touched
rows of weights, biases and their second moments in place and returns grad_inputs.
)doc");

}  // namespace tf_lsh
