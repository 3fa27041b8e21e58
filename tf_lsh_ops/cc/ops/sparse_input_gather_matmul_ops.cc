// Op registrations for the gather-matmul over sparse inputs (a 2-D SparseTensor's parts).
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_lsh_ops/cc/ops/shape_checks.h"

namespace tf_lsh {

using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("TfLsh>SparseInputGatherMatmul")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("weights: float")
    .Input("biases: float")
    .Input("indices: int32")
    .Output("output: float")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      constexpr char kOp[] = "SparseInputGatherMatmul";
      ShapeHandle unused, indices;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "sparse_indices", 2, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "sparse_values", 1, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 3, "weights", 2, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 4, "biases", 1, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 5, "indices", 2, &indices));
      c->set_output(0, indices);
      return absl::OkStatus();
    })
    .Doc(R"doc(
out[b, k] = sum over row b's entries (f, v) of v * weights[indices[b, k], f] + biases[...].
)doc");

REGISTER_OP("TfLsh>SparseInputProducts")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("weights: float")
    .Output("output: float")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      constexpr char kOp[] = "SparseInputProducts";
      ShapeHandle unused, weights;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "sparse_indices", 2, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "sparse_values", 1, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 3, "weights", 2, &weights));
      c->set_output(0, c->Matrix(c->UnknownDim(), c->Dim(weights, 0)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
out[b, u] = sum over row b's entries (f, v) of v * weights[u, f], for every unit u: [batch, N].
)doc");

REGISTER_OP("TfLsh>SparseInputGatherMatmulGrad")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("weights: float")
    .Input("indices: int32")
    .Input("grad_output: float")
    .Output("grad_values: float")
    .Output("rows: int32")
    .Output("grad_weight_rows: float")
    .Output("grad_bias_rows: float")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      ShapeHandle weights;
      TF_RETURN_IF_ERROR(
          WithRankNamed(c, "SparseInputGatherMatmulGrad", 3, "weights", 2, &weights));
      c->set_output(0, c->input(1));
      c->set_output(1, c->Vector(c->UnknownDim()));
      c->set_output(2, c->Matrix(c->UnknownDim(), c->Dim(weights, 1)));
      c->set_output(3, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    })
    .Doc("Gradient of SparseInputGatherMatmul: for the values, and rows of weights and biases.");

namespace {

// The lazy updates' outputs: the values' gradient, the distinct active rows and their biases'
// gradient; `indices` and `grad_output` are inputs `indices_input` and the next.
absl::Status LazyUpdateShape(InferenceContext* c, const char* op, int indices_input) {
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(WithRankNamed(c, op, 0, "sparse_indices", 2, &unused));
  TF_RETURN_IF_ERROR(WithRankNamed(c, op, 1, "sparse_values", 1, &unused));
  TF_RETURN_IF_ERROR(WithRankNamed(c, op, indices_input, "indices", 2, &unused));
  TF_RETURN_IF_ERROR(WithRankNamed(c, op, indices_input + 1, "grad_output", 2, &unused));
  c->set_output(0, c->input(1));
  c->set_output(1, c->Vector(c->UnknownDim()));
  c->set_output(2, c->Vector(c->UnknownDim()));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("TfLsh>ResourceSparseInputGatherMatmulGradLazyAdam")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("weights: resource")
    .Input("weights_m: resource")
    .Input("weights_v: resource")
    .Input("indices: int32")
    .Input("grad_output: float")
    .Input("lr: float")
    .Input("beta1: float")
    .Input("beta2: float")
    .Input("epsilon: float")
    .Input("beta1_power: float")
    .Input("beta2_power: float")
    .Output("grad_values: float")
    .Output("rows: int32")
    .Output("grad_bias_rows: float")
    .SetShapeFn([](InferenceContext* c) {
      return LazyUpdateShape(c, "ResourceSparseInputGatherMatmulGradLazyAdam", 6);
    })
    .Doc(R"doc(
Gradient of SparseInputGatherMatmul with the weights' gradient applied by lazy Adam per weight,
in place: only the weights of the active units on the features present in their examples, and
their moments, change. Returns the gradient of the values and the biases' gradient rows.
)doc");

REGISTER_OP("TfLsh>ResourceSparseInputGatherMatmulGradLazySgd")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("weights: resource")
    .Input("indices: int32")
    .Input("grad_output: float")
    .Input("lr: float")
    .Output("grad_values: float")
    .Output("rows: int32")
    .Output("grad_bias_rows: float")
    .Attr("hogwild: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      return LazyUpdateShape(c, "ResourceSparseInputGatherMatmulGradLazySgd", 4);
    })
    .Doc(R"doc(
ResourceSparseInputGatherMatmulGradLazyAdam with plain SGD per weight: weights -= lr * gradient
on the same weights, and no other state. hogwild: examples split between threads update the
weights directly, unsynchronised, each reading them for its values' gradient as it goes (one
pass; results vary from run to run).
)doc");

namespace {

// SparseInputMatmul takes the kernel as a tensor, ResourceSparseInputMatmul as a variable
// (read in place: no copy of a variable in copy-on-read mode); the same shape functions.
absl::Status SparseInputMatmulShape(InferenceContext* c, bool resource) {
  constexpr char kOp[] = "SparseInputMatmul";
  ShapeHandle unused, kernel = c->Matrix(c->UnknownDim(), c->UnknownDim());
  TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "sparse_indices", 2, &unused));
  TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "sparse_values", 1, &unused));
  if (!resource) {
    TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 3, "kernel", 2, &kernel));
  }
  c->set_output(0, c->Matrix(c->UnknownDim(), c->Dim(kernel, 1)));
  return absl::OkStatus();
}

absl::Status SparseInputMatmulGradShape(InferenceContext* c, bool resource) {
  ShapeHandle kernel = c->Matrix(c->UnknownDim(), c->UnknownDim());
  if (!resource) {
    TF_RETURN_IF_ERROR(WithRankNamed(c, "SparseInputMatmulGrad", 3, "kernel", 2, &kernel));
  }
  bool values_gradient = true;
  TF_RETURN_IF_ERROR(c->GetAttr("values_gradient", &values_gradient));
  c->set_output(0, values_gradient ? c->input(1) : c->Vector(0));
  c->set_output(1, c->Vector(c->UnknownDim()));
  c->set_output(2, c->Matrix(c->UnknownDim(), c->Dim(kernel, 1)));
  return absl::OkStatus();
}

constexpr char kSparseInputMatmulDoc[] = R"doc(
output[b, :] = sum over row b's entries (f, v) of v * kernel[f, :]: sparse inputs times a
feature-major kernel, reading only the rows of the features present.
)doc";

constexpr char kSparseInputMatmulGradDoc[] = R"doc(
Gradient of SparseInputMatmul: for the values (empty unless values_gradient: when the inputs
are data, skipping it saves a pass over the kernel rows), and the kernel rows of the features.
)doc";

}  // namespace

REGISTER_OP("TfLsh>SparseInputMatmul")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("kernel: float")
    .Output("output: float")
    .SetShapeFn([](InferenceContext* c) { return SparseInputMatmulShape(c, false); })
    .Doc(kSparseInputMatmulDoc);

REGISTER_OP("TfLsh>ResourceSparseInputMatmul")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("kernel: resource")
    .Output("output: float")
    .SetShapeFn([](InferenceContext* c) { return SparseInputMatmulShape(c, true); })
    .Doc(kSparseInputMatmulDoc);

REGISTER_OP("TfLsh>SparseInputMatmulGrad")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("kernel: float")
    .Input("grad_output: float")
    .Output("grad_values: float")
    .Output("rows: int32")
    .Output("grad_kernel_rows: float")
    .Attr("values_gradient: bool = true")
    .SetShapeFn([](InferenceContext* c) { return SparseInputMatmulGradShape(c, false); })
    .Doc(kSparseInputMatmulGradDoc);

REGISTER_OP("TfLsh>ResourceSparseInputMatmulGrad")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("kernel: resource")
    .Input("grad_output: float")
    .Output("grad_values: float")
    .Output("rows: int32")
    .Output("grad_kernel_rows: float")
    .Attr("values_gradient: bool = true")
    .SetShapeFn([](InferenceContext* c) { return SparseInputMatmulGradShape(c, true); })
    .Doc(kSparseInputMatmulGradDoc);

REGISTER_OP("TfLsh>ResourceSparseInputMatmulGradAdam")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("kernel: resource")
    .Input("kernel_m: resource")
    .Input("kernel_v: resource")
    .Input("grad_output: float")
    .Input("lr: float")
    .Input("beta1: float")
    .Input("beta2: float")
    .Input("epsilon: float")
    .Input("beta1_power: float")
    .Input("beta2_power: float")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      constexpr char kOp[] = "ResourceSparseInputMatmulGradAdam";
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "sparse_indices", 2, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "sparse_values", 1, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 6, "grad_output", 2, &unused));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The kernel's gradient of ResourceSparseInputMatmul fused with lazy Adam: updates the kernel rows
of the features present, and their moments, in place.
)doc");

REGISTER_OP("TfLsh>ResourceSparseInputMatmulGradAdamNoMomentum")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("kernel: resource")
    .Input("kernel_v: resource")
    .Input("grad_output: float")
    .Input("lr: float")
    .Input("beta2: float")
    .Input("epsilon: float")
    .Input("beta2_power: float")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      constexpr char kOp[] = "ResourceSparseInputMatmulGradAdamNoMomentum";
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "sparse_indices", 2, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "sparse_values", 1, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 5, "grad_output", 2, &unused));
      return absl::OkStatus();
    })
    .Doc(R"doc(
ResourceSparseInputMatmulGradAdam with beta1 = 0 and no first moment kept: updates the kernel
rows of the features present, and their second moments, in place.
)doc");

REGISTER_OP("TfLsh>ResourceSparseInputMatmulGradRowwiseRmsprop")
    .Input("sparse_indices: int64")
    .Input("sparse_values: float")
    .Input("dense_shape: int64")
    .Input("kernel: resource")
    .Input("kernel_v: resource")
    .Input("grad_output: float")
    .Input("lr: float")
    .Input("beta2: float")
    .Input("epsilon: float")
    .Input("beta2_power: float")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      constexpr char kOp[] = "ResourceSparseInputMatmulGradRowwiseRmsprop";
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "sparse_indices", 2, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "sparse_values", 1, &unused));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 5, "grad_output", 2, &unused));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The kernel's gradient of ResourceSparseInputMatmul fused with lazy rowwise RMSprop: updates the
kernel rows of the features present, and their second moments (one per row), in place.
)doc");

}  // namespace tf_lsh
