// CPU kernels of SparseGatherMatmul and its gradient: validate, allocate, call the core.
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"
#include "tf_lsh_ops/cc/kernels/input_checks.h"
#include "tf_lsh_ops/cc/kernels/thread_pool.h"
#include "tf_lsh_ops/cc/kernels/variable_access.h"

namespace tf_lsh {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

namespace {

absl::Status CheckIndices(const char* op, const Tensor& indices, int64_t num_neurons) {
  if (indices.NumElements() >= ActiveRows::kMaxPositions) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": indices has shape ",
                                                   indices.shape().DebugString(),
                                                   "; at most 2^32 - 1 entries are supported"));
  }
  const int64_t bad = FindInvalidIndex(indices.flat<int32_t>().data(), indices.NumElements(),
                                       num_neurons);
  if (bad >= 0) {
    const int64_t active = indices.dim_size(1);
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": indices[", bad / active, ", ", bad % active, "] = ",
        indices.flat<int32_t>()(bad), " is outside [-1, ", num_neurons,
        ") (weights has ", num_neurons, " rows; indices has shape ",
        indices.shape().DebugString(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace

// Serves SparseGatherMatmul (weights and biases as tensors) and ResourceSparseGatherMatmul
// (as variables, read in place).
class SparseGatherMatmulOp : public OpKernel {
 public:
  explicit SparseGatherMatmulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const char* kOp = type_string().c_str();
    InputTensor weights_input, biases_input;
    OP_REQUIRES_OK(ctx, weights_input.Init(ctx, kOp, "weights", 1));
    OP_REQUIRES_OK(ctx, biases_input.Init(ctx, kOp, "biases", 2));
    const Tensor& inputs = ctx->input(0);
    const Tensor& weights = weights_input.tensor();
    const Tensor& biases = biases_input.tensor();
    const Tensor& indices = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "inputs", inputs, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "weights", weights, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "biases", biases, 1));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "indices", indices, 2));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "inputs", inputs, 1, "weights", weights, 1));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "weights", weights, 0, "biases", biases, 0));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "inputs", inputs, 0, "indices", indices, 0));
    OP_REQUIRES_OK(ctx, CheckIndices(kOp, indices, weights.dim_size(0)));

    const GatherMatmulShape shape{inputs.dim_size(0), inputs.dim_size(1), weights.dim_size(0),
                                  indices.dim_size(1)};
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({shape.batch, shape.active}),
                                             &output));
    const ActiveRows rows(indices.flat<int32_t>().data(), indices.NumElements());
    SparseGatherMatmulForward(shape, inputs.flat<float>().data(), weights.flat<float>().data(),
                              biases.flat<float>().data(), rows, output->flat<float>().data(),
                              TfParallelFor(ctx));
  }
};

class SparseGatherMatmulGradOp : public OpKernel {
 public:
  explicit SparseGatherMatmulGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const char* kOp = type_string().c_str();
    InputTensor weights_input;
    OP_REQUIRES_OK(ctx, weights_input.Init(ctx, kOp, "weights", 1));
    const Tensor& inputs = ctx->input(0);
    const Tensor& weights = weights_input.tensor();
    const Tensor& indices = ctx->input(2);
    const Tensor& grad_output = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "inputs", inputs, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "weights", weights, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "indices", indices, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "grad_output", grad_output, 2));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "inputs", inputs, 1, "weights", weights, 1));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "inputs", inputs, 0, "indices", indices, 0));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "grad_output", grad_output, 0, "indices", indices, 0));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "grad_output", grad_output, 1, "indices", indices, 1));
    OP_REQUIRES_OK(ctx, CheckIndices(kOp, indices, weights.dim_size(0)));

    const GatherMatmulShape shape{inputs.dim_size(0), inputs.dim_size(1), weights.dim_size(0),
                                  indices.dim_size(1)};
    const ActiveRows rows(indices.flat<int32_t>().data(), indices.NumElements());
    Tensor *grad_inputs = nullptr, *row_ids = nullptr, *grad_weight_rows = nullptr,
           *grad_bias_rows = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, inputs.shape(), &grad_inputs));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({rows.size()}), &row_ids));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({rows.size(), shape.dim}),
                                             &grad_weight_rows));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({rows.size()}), &grad_bias_rows));
    std::copy(rows.ids().begin(), rows.ids().end(), row_ids->flat<int32_t>().data());
    SparseGatherMatmulBackward(shape, inputs.flat<float>().data(), weights.flat<float>().data(),
                               grad_output.flat<float>().data(), rows,
                               grad_inputs->flat<float>().data(),
                               grad_weight_rows->flat<float>().data(),
                               grad_bias_rows->flat<float>().data(), TfParallelFor(ctx));
  }
};

REGISTER_KERNEL_BUILDER(Name("SparseGatherMatmul").Device(tensorflow::DEVICE_CPU),
                        SparseGatherMatmulOp);
REGISTER_KERNEL_BUILDER(Name("SparseGatherMatmulGrad").Device(tensorflow::DEVICE_CPU),
                        SparseGatherMatmulGradOp);
REGISTER_KERNEL_BUILDER(Name("ResourceSparseGatherMatmul").Device(tensorflow::DEVICE_CPU),
                        SparseGatherMatmulOp);
REGISTER_KERNEL_BUILDER(Name("ResourceSparseGatherMatmulGrad").Device(tensorflow::DEVICE_CPU),
                        SparseGatherMatmulGradOp);

}  // namespace tf_lsh
