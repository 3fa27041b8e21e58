// CPU kernels of SparseGatherMatmul and its gradient: validate, allocate, call the core.
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/row_groups.h"
#include "tf_lsh_ops/cc/core/shared_gather_matmul.h"
#include "tf_lsh_ops/cc/core/sparse_adam.h"
#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"
#include "tf_lsh_ops/cc/kernels/adam_inputs.h"
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

// Input indices, in the order of the ops' registrations (ops/sparse_gather_matmul_ops.cc); the
// resource twins take theirs in the same order. The gradients take the forward op's grouping
// as three consecutive inputs, from kRows on (GroupingInput).
struct ForwardInput {
  enum : int { kInputs, kWeights, kBiases, kIndices };
};
struct GradInput {
  enum : int { kInputs, kWeights, kRows, kRowSplits, kPositions, kGradOutput, kIndices };
};
// ResourceSparseGatherMatmulGradAdam; Adam's scalars (adam_inputs.h) from kLr.
struct GradAdamInput {
  enum : int {
    kInputs,
    kWeights,
    kBiases,
    kWeightsM,
    kWeightsV,
    kBiasesM,
    kBiasesV,
    kRows,
    kRowSplits,
    kPositions,
    kGradOutput,
    kIndices,
    kLr
  };
};
// ResourceSparseGatherMatmulGradAdamNoMomentum: no first moments; the scalars lr, beta2,
// epsilon, beta2_power from kLr.
struct GradAdamNoMomentumInput {
  enum : int {
    kInputs,
    kWeights,
    kBiases,
    kWeightsV,
    kBiasesV,
    kRows,
    kRowSplits,
    kPositions,
    kGradOutput,
    kIndices,
    kLr
  };
};
struct GroupingInput {
  enum : int { kRows, kRowSplits, kPositions };
};

absl::Status CheckIndices(const char* op, const Tensor& indices, int64_t num_neurons) {
  if (indices.NumElements() > ActiveRows::kMaxPositions) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": indices has shape ",
                                                   indices.shape().DebugString(),
                                                   "; at most 2^31 - 1 entries are supported"));
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

// indices is [batch, active], or [1, active] for an active set shared by the whole batch.
absl::Status CheckIndicesBatch(const char* op, const Tensor& inputs, const Tensor& indices) {
  if (indices.dim_size(0) == inputs.dim_size(0) || indices.dim_size(0) == 1) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      op, ": indices has shape ", indices.shape().DebugString(), "; its dimension 0 must be 1 "
      "(one active set for the batch) or equal dimension 0 of inputs (shape ",
      inputs.shape().DebugString(), ")"));
}

// A [1, active] index matrix serves every example of a batch of any other size (0 included).
bool SharedIndices(const Tensor& inputs, const Tensor& indices) {
  return indices.dim_size(0) == 1 && inputs.dim_size(0) != 1;
}

// The forward op's grouping (rows, row_splits, positions) at inputs `first` .. `first + 2`,
// checked against the layer (num_neurons) and the index matrix (num_slots entries).
absl::Status ReadGrouping(OpKernelContext* ctx, const char* op, int first, int64_t num_neurons,
                          int64_t num_slots, RowGroups* groups) {
  const Tensor& rows = ctx->input(first + GroupingInput::kRows);
  const Tensor& row_splits = ctx->input(first + GroupingInput::kRowSplits);
  const Tensor& positions = ctx->input(first + GroupingInput::kPositions);
  TF_RETURN_IF_ERROR(CheckRank(op, "rows", rows, 1));
  TF_RETURN_IF_ERROR(CheckRank(op, "row_splits", row_splits, 1));
  TF_RETURN_IF_ERROR(CheckRank(op, "positions", positions, 1));
  if (row_splits.NumElements() != rows.NumElements() + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": row_splits must have one entry more than rows; got shapes ",
        row_splits.shape().DebugString(), " and ", rows.shape().DebugString()));
  }
  *groups = {rows.flat<int32_t>().data(), row_splits.flat<int32_t>().data(),
             positions.flat<int32_t>().data(), rows.NumElements()};
  const std::string error =
      CheckRowGroups(*groups, positions.NumElements(), num_neurons, num_slots);
  if (!error.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the grouping from the forward op is invalid: ", error));
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
    const char* kOp = OpName(*this);
    InputTensor weights_input, biases_input;
    OP_REQUIRES_OK(ctx, weights_input.Init(ctx, kOp, "weights", ForwardInput::kWeights));
    OP_REQUIRES_OK(ctx, biases_input.Init(ctx, kOp, "biases", ForwardInput::kBiases));
    const Tensor& inputs = ctx->input(ForwardInput::kInputs);
    const Tensor& weights = weights_input.tensor();
    const Tensor& biases = biases_input.tensor();
    const Tensor& indices = ctx->input(ForwardInput::kIndices);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "inputs", inputs, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "weights", weights, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "biases", biases, 1));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "indices", indices, 2));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "inputs", inputs, 1, "weights", weights, 1));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "weights", weights, 0, "biases", biases, 0));
    OP_REQUIRES_OK(ctx, CheckIndicesBatch(kOp, inputs, indices));
    OP_REQUIRES_OK(ctx, CheckIndices(kOp, indices, weights.dim_size(0)));
    weights_input.AdviseHugePagesFor(indices.NumElements());

    const GatherMatmulShape shape{inputs.dim_size(0), inputs.dim_size(1), weights.dim_size(0),
                                  indices.dim_size(1)};
    const bool shared = SharedIndices(inputs, indices);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({shape.batch, shape.active}),
                                             &output));
    // The grouping is written straight into outputs 1-3, which the gradient reuses.
    absl::Status status;
    const RowGroupAllocator allocate{
        [ctx, &status](int64_t num_positions, int32_t** positions) {
          Tensor* tensor = nullptr;
          status = ctx->allocate_output(3, TensorShape({num_positions}), &tensor);
          if (status.ok()) *positions = tensor->flat<int32_t>().data();
          return status.ok();
        },
        [ctx, &status](int64_t num_rows, int32_t** ids, int32_t** offsets) {
          Tensor *ids_tensor = nullptr, *offsets_tensor = nullptr;
          status = ctx->allocate_output(1, TensorShape({num_rows}), &ids_tensor);
          if (status.ok()) {
            status = ctx->allocate_output(2, TensorShape({num_rows + 1}), &offsets_tensor);
          }
          if (!status.ok()) return false;
          *ids = ids_tensor->flat<int32_t>().data();
          *offsets = offsets_tensor->flat<int32_t>().data();
          return true;
        }};
    const float* inputs_data = inputs.flat<float>().data();
    const float* weights_data = weights.flat<float>().data();
    const float* biases_data = biases.flat<float>().data();
    const int32_t* indices_data = indices.flat<int32_t>().data();
    float* out = output->flat<float>().data();
    RowGroups rows;
    if (!shared) {
      GroupAndMultiply(shape, inputs_data, weights_data, biases_data, indices_data, allocate,
                       out, TfParallelFor(ctx), &rows);
      OP_REQUIRES_OK(ctx, status);  // stops early only when an allocation failed
      return;
    }
    GroupRows(indices_data, indices.NumElements(), shape.num_neurons, allocate,
              TfParallelFor(ctx), &rows);
    OP_REQUIRES_OK(ctx, status);
    SharedGatherMatmulForward(shape, inputs_data, weights_data, biases_data, indices_data, out,
                              TfParallelFor(ctx));
  }
};

class SparseGatherMatmulGradOp : public OpKernel {
 public:
  explicit SparseGatherMatmulGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const char* kOp = OpName(*this);
    InputTensor weights_input;
    OP_REQUIRES_OK(ctx, weights_input.Init(ctx, kOp, "weights", GradInput::kWeights));
    const Tensor& inputs = ctx->input(GradInput::kInputs);
    const Tensor& weights = weights_input.tensor();
    const Tensor& grad_output = ctx->input(GradInput::kGradOutput);
    const Tensor& indices = ctx->input(GradInput::kIndices);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "inputs", inputs, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "indices", indices, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "weights", weights, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "grad_output", grad_output, 2));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "inputs", inputs, 1, "weights", weights, 1));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "grad_output", grad_output, 0, "inputs", inputs, 0));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "grad_output", grad_output, 1, "indices", indices, 1));
    OP_REQUIRES_OK(ctx, CheckIndicesBatch(kOp, inputs, indices));
    weights_input.AdviseHugePagesFor(indices.NumElements());
    const bool shared = SharedIndices(inputs, indices);
    RowGroups groups;
    OP_REQUIRES_OK(ctx, ReadGrouping(ctx, kOp, GradInput::kRows, weights.dim_size(0),
                                     indices.NumElements(), &groups));

    const GatherMatmulShape shape{inputs.dim_size(0), inputs.dim_size(1), weights.dim_size(0),
                                  grad_output.dim_size(1)};
    Tensor *grad_inputs = nullptr, *grad_weight_rows = nullptr, *grad_bias_rows = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, inputs.shape(), &grad_inputs));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({groups.num_rows, shape.dim}),
                                             &grad_weight_rows));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({groups.num_rows}), &grad_bias_rows));
    if (shared) {
      SharedGatherMatmulBackward(shape, inputs.flat<float>().data(),
                                 weights.flat<float>().data(), grad_output.flat<float>().data(),
                                 indices.flat<int32_t>().data(), groups,
                                 grad_inputs->flat<float>().data(),
                                 grad_weight_rows->flat<float>().data(),
                                 grad_bias_rows->flat<float>().data(), TfParallelFor(ctx));
      return;
    }
    SparseGatherMatmulBackward(shape, inputs.flat<float>().data(), weights.flat<float>().data(),
                               grad_output.flat<float>().data(), groups,
                               grad_inputs->flat<float>().data(),
                               grad_weight_rows->flat<float>().data(),
                               grad_bias_rows->flat<float>().data(), TfParallelFor(ctx));
  }
};

// ResourceSparseGatherMatmulGradAdam (kFirstMoment) and its twin without first moments
// (beta1 = 0).
template <bool kFirstMoment>
class SparseGatherMatmulGradAdamOp : public OpKernel {
 public:
  explicit SparseGatherMatmulGradAdamOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    using Input = std::conditional_t<kFirstMoment, GradAdamInput, GradAdamNoMomentumInput>;
    const char* kOp = kFirstMoment ? "ResourceSparseGatherMatmulGradAdam"
                                   : "ResourceSparseGatherMatmulGradAdamNoMomentum";
    AdamHyperparameters hyper;
    OP_REQUIRES_OK(ctx, kFirstMoment ? ReadAdamInputs(ctx, kOp, Input::kLr, &hyper)
                                     : ReadAdamNoMomentumInputs(ctx, kOp, Input::kLr, &hyper));
    // weights, biases, then their moments: (m, v) of the weights and of the biases, or v alone.
    std::vector<std::pair<const char*, int>> variables = {{"weights", Input::kWeights},
                                                          {"biases", Input::kBiases}};
    if (kFirstMoment) {
      variables.insert(variables.end(), {{"weights_m", GradAdamInput::kWeightsM},
                                         {"weights_v", GradAdamInput::kWeightsV},
                                         {"biases_m", GradAdamInput::kBiasesM},
                                         {"biases_v", GradAdamInput::kBiasesV}});
    } else {
      variables.insert(variables.end(), {{"weights_v", GradAdamNoMomentumInput::kWeightsV},
                                         {"biases_v", GradAdamNoMomentumInput::kBiasesV}});
    }
    UpdatableVariables vars;
    OP_REQUIRES_OK(ctx, vars.Init(ctx, kOp, variables));
    const Tensor& inputs = ctx->input(Input::kInputs);
    const Tensor& weights = *vars.tensor(0);
    const Tensor& biases = *vars.tensor(1);
    const Tensor& grad_output = ctx->input(Input::kGradOutput);
    const Tensor& indices = ctx->input(Input::kIndices);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "inputs", inputs, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "weights", weights, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "biases", biases, 1));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "grad_output", grad_output, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "indices", indices, 2));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "inputs", inputs, 1, "weights", weights, 1));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "weights", weights, 0, "biases", biases, 0));
    const int moments_per_variable = kFirstMoment ? 2 : 1;
    for (int i = 2; i < static_cast<int>(variables.size()); ++i) {
      const int owner = (i - 2) / moments_per_variable;  // 0: weights, 1: biases
      OP_REQUIRES_OK(ctx, vars.CheckSameShape(kOp, i, variables[i].first, owner,
                                              variables[owner].first));
    }
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "grad_output", grad_output, 0, "inputs", inputs, 0));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "grad_output", grad_output, 1, "indices", indices, 1));
    OP_REQUIRES_OK(ctx, CheckIndicesBatch(kOp, inputs, indices));
    vars.AdviseHugePagesFor(indices.NumElements());
    RowGroups groups;
    OP_REQUIRES_OK(ctx, ReadGrouping(ctx, kOp, Input::kRows, weights.dim_size(0),
                                     indices.NumElements(), &groups));

    const GatherMatmulShape shape{inputs.dim_size(0), inputs.dim_size(1), weights.dim_size(0),
                                  grad_output.dim_size(1)};
    Tensor* grad_inputs = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, inputs.shape(), &grad_inputs));
    const AdamTarget adam =
        kFirstMoment ? AdamTarget{hyper,
                                  {vars.data(0), vars.data(2), vars.data(3)},
                                  {vars.data(1), vars.data(4), vars.data(5)}}
                     : AdamTarget{hyper, {vars.data(0), nullptr, vars.data(2)},
                                  {vars.data(1), nullptr, vars.data(3)}};
    if (!SharedIndices(inputs, indices)) {
      SparseGatherMatmulBackwardAdam(shape, inputs.flat<float>().data(),
                                     grad_output.flat<float>().data(), groups, adam,
                                     grad_inputs->flat<float>().data(), TfParallelFor(ctx));
      return;
    }
    // A shared set touches few rows: its gradient rows go through a small buffer.
    Tensor grad_weight_rows, grad_bias_rows;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT,
                                           TensorShape({groups.num_rows, shape.dim}),
                                           &grad_weight_rows));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({groups.num_rows}),
                                           &grad_bias_rows));
    SharedGatherMatmulBackward(shape, inputs.flat<float>().data(), adam.weights.var,
                               grad_output.flat<float>().data(), indices.flat<int32_t>().data(),
                               groups, grad_inputs->flat<float>().data(),
                               grad_weight_rows.flat<float>().data(),
                               grad_bias_rows.flat<float>().data(), TfParallelFor(ctx));
    SparseAdamApply(hyper, shape.dim, groups.ids, grad_weight_rows.flat<float>().data(),
                    groups.num_rows, adam.weights.var, adam.weights.m, adam.weights.v,
                    TfParallelFor(ctx));
    SparseAdamApply(hyper, 1, groups.ids, grad_bias_rows.flat<float>().data(), groups.num_rows,
                    adam.biases.var, adam.biases.m, adam.biases.v, TfParallelFor(ctx));
  }
};

REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseGatherMatmul").Device(tensorflow::DEVICE_CPU),
                        SparseGatherMatmulOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseGatherMatmulGrad").Device(tensorflow::DEVICE_CPU),
                        SparseGatherMatmulGradOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>ResourceSparseGatherMatmul").Device(tensorflow::DEVICE_CPU),
                        SparseGatherMatmulOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>ResourceSparseGatherMatmulGrad").Device(tensorflow::DEVICE_CPU),
                        SparseGatherMatmulGradOp);
REGISTER_KERNEL_BUILDER(
    Name("TfLsh>ResourceSparseGatherMatmulGradAdam").Device(tensorflow::DEVICE_CPU),
    SparseGatherMatmulGradAdamOp</*kFirstMoment=*/true>);
REGISTER_KERNEL_BUILDER(
    Name("TfLsh>ResourceSparseGatherMatmulGradAdamNoMomentum").Device(tensorflow::DEVICE_CPU),
    SparseGatherMatmulGradAdamOp</*kFirstMoment=*/false>);

}  // namespace tf_lsh
