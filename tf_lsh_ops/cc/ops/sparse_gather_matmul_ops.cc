// Op registrations and shape functions for the sparse gather-matmul and its gradient.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_lsh_ops/cc/ops/shape_checks.h"

namespace tf_lsh {

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("SparseGatherMatmul")
    .Input("inputs: float")
    .Input("weights: float")
    .Input("biases: float")
    .Input("indices: int32")
    .Output("output: float")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      constexpr char kOp[] = "SparseGatherMatmul";
      ShapeHandle inputs, weights, biases, indices;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "inputs", 2, &inputs));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "weights", 2, &weights));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 2, "biases", 1, &biases));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 3, "indices", 2, &indices));
      DimensionHandle unused;
      TF_RETURN_IF_ERROR(MergeNamed(c, kOp, inputs, 1, "inputs", weights, 1, "weights", &unused));
      TF_RETURN_IF_ERROR(MergeNamed(c, kOp, weights, 0, "weights", biases, 0, "biases", &unused));
      DimensionHandle batch;
      TF_RETURN_IF_ERROR(MergeNamed(c, kOp, inputs, 0, "inputs", indices, 0, "indices", &batch));
      c->set_output(0, c->Matrix(batch, c->Dim(indices, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
out[b, k] = dot(inputs[b], weights[indices[b, k]]) + biases[indices[b, k]]; index -1 gives 0.
)doc");

REGISTER_OP("SparseGatherMatmulGrad")
    .Input("inputs: float")
    .Input("weights: float")
    .Input("indices: int32")
    .Input("grad_output: float")
    .Output("grad_inputs: float")
    .Output("rows: int32")
    .Output("grad_weight_rows: float")
    .Output("grad_bias_rows: float")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      constexpr char kOp[] = "SparseGatherMatmulGrad";
      ShapeHandle inputs, weights, indices, grad_output;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "inputs", 2, &inputs));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "weights", 2, &weights));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 2, "indices", 2, &indices));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 3, "grad_output", 2, &grad_output));
      DimensionHandle dim;
      TF_RETURN_IF_ERROR(MergeNamed(c, kOp, inputs, 1, "inputs", weights, 1, "weights", &dim));
      c->set_output(0, inputs);
      DimensionHandle rows = c->UnknownDim();
      c->set_output(1, c->Vector(rows));
      c->set_output(2, c->Matrix(rows, dim));
      c->set_output(3, c->Vector(rows));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of SparseGatherMatmul: dense grad_inputs, and one row of weight and bias gradients per
distinct neuron in `indices` (`rows`, sorted; -1 entries skipped).
)doc");

// The same ops reading weights and biases from resource variables in place (no copy, even in
// copy-on-read mode); their gradients are IndexedSlices for the variables.
REGISTER_OP("ResourceSparseGatherMatmul")
    .Input("inputs: float")
    .Input("weights: resource")
    .Input("biases: resource")
    .Input("indices: int32")
    .Output("output: float")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      constexpr char kOp[] = "ResourceSparseGatherMatmul";
      ShapeHandle inputs, indices;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "inputs", 2, &inputs));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 3, "indices", 2, &indices));
      DimensionHandle batch;
      TF_RETURN_IF_ERROR(MergeNamed(c, kOp, inputs, 0, "inputs", indices, 0, "indices", &batch));
      c->set_output(0, c->Matrix(batch, c->Dim(indices, 1)));
      return absl::OkStatus();
    })
    .Doc("SparseGatherMatmul with weights and biases read from resource variables.");

REGISTER_OP("ResourceSparseGatherMatmulGrad")
    .Input("inputs: float")
    .Input("weights: resource")
    .Input("indices: int32")
    .Input("grad_output: float")
    .Output("grad_inputs: float")
    .Output("rows: int32")
    .Output("grad_weight_rows: float")
    .Output("grad_bias_rows: float")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      ShapeHandle inputs;
      TF_RETURN_IF_ERROR(WithRankNamed(c, "ResourceSparseGatherMatmulGrad", 0, "inputs", 2,
                                       &inputs));
      c->set_output(0, inputs);
      DimensionHandle rows = c->UnknownDim();
      c->set_output(1, c->Vector(rows));
      c->set_output(2, c->Matrix(rows, c->Dim(inputs, 1)));
      c->set_output(3, c->Vector(rows));
      return absl::OkStatus();
    })
    .Doc("Gradient of ResourceSparseGatherMatmul.");

}  // namespace tf_lsh
