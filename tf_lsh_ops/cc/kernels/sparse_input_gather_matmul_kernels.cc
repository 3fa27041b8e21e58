// Kernels of SparseInputGatherMatmul, SparseInputMatmul, their gradients and the gradient fused
// with Adam: validate, regroup, call the core.
#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/row_groups.h"
#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"
#include "tf_lsh_ops/cc/core/sparse_input_gather_matmul.h"
#include "tf_lsh_ops/cc/kernels/adam_inputs.h"
#include "tf_lsh_ops/cc/kernels/input_checks.h"
#include "tf_lsh_ops/cc/kernels/sparse_inputs.h"
#include "tf_lsh_ops/cc/kernels/thread_pool.h"
#include "tf_lsh_ops/cc/kernels/variable_access.h"

namespace tf_lsh {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;

namespace {

// Input indices after the SparseTensor's three (sparse_inputs.h), in the order of the ops'
// registrations (ops/sparse_input_gather_matmul_ops.cc); the resource twins take theirs in the
// same order.
struct SparseInputGatherMatmulInput {
  enum : int { kWeights = SparseTensorInput::kNext, kBiases, kIndices };
};
struct SparseInputGatherMatmulGradInput {
  enum : int { kWeights = SparseTensorInput::kNext, kIndices, kGradOutput };
};
// ResourceSparseInputGatherMatmulGradLazyAdam; Adam's scalars (adam_inputs.h) from kLr.
struct SparseInputGatherMatmulGradLazyAdamInput {
  enum : int {
    kWeights = SparseTensorInput::kNext,
    kWeightsM,
    kWeightsV,
    kIndices,
    kGradOutput,
    kLr
  };
};
// ResourceSparseInputGatherMatmulGradLazySgd.
struct SparseInputGatherMatmulGradLazySgdInput {
  enum : int { kWeights = SparseTensorInput::kNext, kIndices, kGradOutput, kLr };
};
// SparseInputMatmul (kernel only) and SparseInputMatmulGrad.
struct SparseInputMatmulInput {
  enum : int { kKernel = SparseTensorInput::kNext, kGradOutput };
};
// ResourceSparseInputMatmulGradAdam; Adam's scalars (adam_inputs.h) from kLr.
struct SparseInputMatmulGradAdamInput {
  enum : int { kKernel = SparseTensorInput::kNext, kKernelM, kKernelV, kGradOutput, kLr };
};

// ResourceSparseInputMatmulGradRowwiseRmsprop and ResourceSparseInputMatmulGradAdamNoMomentum:
// a second moment only; the scalars lr, beta2, epsilon, beta2_power from kLr.
struct SparseInputMatmulGradSecondMomentInput {
  enum : int { kKernel = SparseTensorInput::kNext, kKernelV, kGradOutput, kLr };
};

// Checks neuron-major weights [N, D] against the sparse inputs [B, D].
absl::Status CheckWeights(const char* op, const SparseRows& rows, const Tensor& weights) {
  TF_RETURN_IF_ERROR(CheckRank(op, "weights", weights, 2));
  if (weights.dim_size(1) == rows.dim) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      op, ": the sparse inputs have dense_shape [", rows.batch, ", ", rows.dim,
      "]; weights (shape ", weights.shape().DebugString(), ") must have ", rows.dim, " columns"));
}

// Checks weights [N, D], biases [N] (if given), indices [B, K] against the sparse inputs
// [B, D] and returns the shape.
absl::Status CheckArguments(const char* op, OpKernelContext* ctx, const SparseRows& rows,
                            const Tensor& weights, const Tensor* biases, const Tensor& indices,
                            GatherMatmulShape* shape) {
  TF_RETURN_IF_ERROR(CheckWeights(op, rows, weights));
  TF_RETURN_IF_ERROR(CheckRank(op, "indices", indices, 2));
  if (biases != nullptr) {
    TF_RETURN_IF_ERROR(CheckRank(op, "biases", *biases, 1));
    TF_RETURN_IF_ERROR(CheckSameDim(op, "weights", weights, 0, "biases", *biases, 0));
  }
  if (indices.dim_size(0) != rows.batch) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the sparse inputs have dense_shape [", rows.batch, ", ", rows.dim,
        "]; indices (shape ", indices.shape().DebugString(), ") must have ", rows.batch,
        " rows"));
  }
  const int64_t num_neurons = weights.dim_size(0);
  const int64_t bad = FindInvalidIndex(indices.flat<int32_t>().data(), indices.NumElements(),
                                       num_neurons);
  if (bad >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": indices holds ", indices.flat<int32_t>()(bad), " at flat position ", bad,
        ", outside [-1, ", num_neurons, ") (weights has shape ", weights.shape().DebugString(),
        ")"));
  }
  if (indices.NumElements() > ActiveRows::kMaxPositions) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": indices has too many entries"));
  }
  *shape = {rows.batch, rows.dim, num_neurons, indices.dim_size(1)};
  return absl::OkStatus();
}

// Checks a kernel [num_features, units] against the sparse inputs [batch, num_features].
absl::Status CheckKernel(OpKernelContext* ctx, const char* op, const SparseRows& rows,
                         const Tensor& kernel) {
  const int64_t num_entries = ctx->input(SparseTensorInput::kValues).NumElements();
  TF_RETURN_IF_ERROR(CheckRank(op, "kernel", kernel, 2));
  if (kernel.dim_size(0) != rows.dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the sparse inputs have dense_shape [", rows.batch, ", ", rows.dim,
        "]; kernel (shape ", kernel.shape().DebugString(), ") must have ", rows.dim, " rows"));
  }
  // Entries and examples are numbered with int32 in the gradient's grouping.
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (rows.batch > kMax || rows.dim > kMax || num_entries > kMax) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": at most 2^31 - 1 rows, features and entries are supported; dense_shape is [",
        rows.batch, ", ", rows.dim, "]"));
  }
  return absl::OkStatus();
}

// The inputs both SparseInputMatmul kernels start with: the sparse inputs [batch,
// num_features] and the kernel [num_features, units] (a tensor or a variable read in place),
// checked against each other.
absl::Status ReadSparseInputsAndKernel(OpKernelContext* ctx, const char* op, SparseRows* rows,
                                       InputTensor* kernel_input) {
  TF_RETURN_IF_ERROR(CheckSparseInputs(op, ctx, rows));
  TF_RETURN_IF_ERROR(kernel_input->Init(ctx, op, "kernel", SparseInputMatmulInput::kKernel));
  return CheckKernel(ctx, op, *rows, kernel_input->tensor());
}

// Checks grad_output against [batch, units].
absl::Status CheckGradOutput(const char* op, const Tensor& grad_output, int64_t batch,
                             int64_t units) {
  if (grad_output.shape() == TensorShape({batch, units})) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      op, ": grad_output has shape ", grad_output.shape().DebugString(),
      "; it must be [batch, units] = [", batch, ", ", units, "]"));
}

// The entries of `rows` grouped by feature: one kernel row per distinct feature. Entries whose
// value is 0 are left out: they give the kernel no gradient, so a row only they touch is left
// as if its feature were absent (an LSHDense's candidates that were not passed on).
ActiveRows GroupByFeature(OpKernelContext* ctx, const SparseRows& rows, int64_t num_features) {
  std::vector<int32_t> features(rows.feature_ids.size());
  for (size_t j = 0; j < features.size(); ++j) {
    features[j] = rows.values[j] == 0.f ? -1 : static_cast<int32_t>(rows.feature_ids[j]);
  }
  return ActiveRows(features.data(), features.size(), TfParallelFor(ctx), num_features);
}

}  // namespace

class SparseInputGatherMatmulOp : public OpKernel {
 public:
  explicit SparseInputGatherMatmulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    constexpr char kOp[] = "SparseInputGatherMatmul";
    SparseRows rows;
    OP_REQUIRES_OK(ctx, CheckSparseInputs(kOp, ctx, &rows));
    const Tensor& weights = ctx->input(SparseInputGatherMatmulInput::kWeights);
    const Tensor& biases = ctx->input(SparseInputGatherMatmulInput::kBiases);
    const Tensor& indices = ctx->input(SparseInputGatherMatmulInput::kIndices);
    GatherMatmulShape shape;
    OP_REQUIRES_OK(ctx, CheckArguments(kOp, ctx, rows, weights, &biases, indices, &shape));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, indices.shape(), &output));
    OP_REQUIRES_OK(ctx, GroupSparseRows(ctx, &rows));
    SparseInputGatherMatmulForward(shape, rows.view(), weights.flat<float>().data(),
                                   biases.flat<float>().data(), indices.flat<int32_t>().data(),
                                   output->flat<float>().data(), TfParallelFor(ctx));
  }
};

class SparseInputProductsOp : public OpKernel {
 public:
  explicit SparseInputProductsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    constexpr char kOp[] = "SparseInputProducts";
    SparseRows rows;
    OP_REQUIRES_OK(ctx, CheckSparseInputs(kOp, ctx, &rows));
    const Tensor& weights = ctx->input(SparseInputGatherMatmulInput::kWeights);
    OP_REQUIRES_OK(ctx, CheckWeights(kOp, rows, weights));
    const int64_t units = weights.dim_size(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, {rows.batch, units}, &output));
    OP_REQUIRES_OK(ctx, GroupSparseRows(ctx, &rows));
    SparseInputProducts(rows.batch, units, rows.dim, rows.view(), weights.flat<float>().data(),
                        output->flat<float>().data(), TfParallelFor(ctx));
  }
};

class SparseInputGatherMatmulGradOp : public OpKernel {
 public:
  explicit SparseInputGatherMatmulGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    constexpr char kOp[] = "SparseInputGatherMatmulGrad";
    SparseRows rows;
    OP_REQUIRES_OK(ctx, CheckSparseInputs(kOp, ctx, &rows));
    const Tensor& weights = ctx->input(SparseInputGatherMatmulGradInput::kWeights);
    const Tensor& indices = ctx->input(SparseInputGatherMatmulGradInput::kIndices);
    const Tensor& grad_output = ctx->input(SparseInputGatherMatmulGradInput::kGradOutput);
    GatherMatmulShape shape;
    OP_REQUIRES_OK(ctx, CheckArguments(kOp, ctx, rows, weights, nullptr, indices, &shape));
    OP_REQUIRES(ctx, grad_output.shape() == indices.shape(),
                absl::InvalidArgumentError(absl::StrCat(
                    kOp, ": grad_output has shape ", grad_output.shape().DebugString(),
                    "; it must match indices, ", indices.shape().DebugString())));
    OP_REQUIRES_OK(ctx, GroupSparseRows(ctx, &rows));
    const ActiveRows active(indices.flat<int32_t>().data(), indices.NumElements(),
                            TfParallelFor(ctx), shape.num_neurons);
    Tensor *grad_values = nullptr, *row_ids = nullptr, *grad_weight_rows = nullptr,
           *grad_bias_rows = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(SparseTensorInput::kValues).shape(),
                                             &grad_values));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({active.size()}), &row_ids));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({active.size(), shape.dim}),
                                             &grad_weight_rows));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({active.size()}), &grad_bias_rows));
    std::copy(active.ids().begin(), active.ids().end(), row_ids->flat<int32_t>().data());
    std::vector<float> grad_csr(rows.values.size());
    SparseInputGatherMatmulBackward(
        shape, rows.view(), weights.flat<float>().data(), indices.flat<int32_t>().data(),
        grad_output.flat<float>().data(), active.view(), grad_csr.data(),
        grad_weight_rows->flat<float>().data(), grad_bias_rows->flat<float>().data(),
        TfParallelFor(ctx));
    rows.ToEntryOrder(grad_csr, grad_values->flat<float>().data());
  }
};


// The two rules of the lazy per-weight update: what each reads besides the weights (its
// variables and scalars) and the core function it calls.
struct LazyAdamRule {
  explicit LazyAdamRule(OpKernelConstruction*) {}

  static constexpr char kOp[] = "ResourceSparseInputGatherMatmulGradLazyAdam";
  using Input = SparseInputGatherMatmulGradLazyAdamInput;
  static std::vector<std::pair<const char*, int>> Variables() {
    return {{"weights", Input::kWeights},
            {"weights_m", Input::kWeightsM},
            {"weights_v", Input::kWeightsV}};
  }

  absl::Status Read(OpKernelContext* ctx, UpdatableVariables* vars) {
    TF_RETURN_IF_ERROR(vars->CheckSameShape(kOp, 1, "weights_m", 0, "weights"));
    TF_RETURN_IF_ERROR(vars->CheckSameShape(kOp, 2, "weights_v", 0, "weights"));
    return ReadAdamInputs(ctx, kOp, Input::kLr, &hyper);
  }

  void Apply(const GatherMatmulShape& shape, const SparseRowsView& inputs,
             const int32_t* indices, const float* grad_out, const RowGroups& rows,
             UpdatableVariables* vars, float* grad_values, float* grad_bias_rows,
             const ParallelFor& parallel_for) const {
    SparseInputGatherMatmulBackwardLazyAdam(
        shape, inputs, indices, grad_out, rows, hyper,
        {vars->data(0), vars->data(1), vars->data(2)}, grad_values, grad_bias_rows,
        parallel_for);
  }

  AdamHyperparameters hyper;
};

struct LazySgdRule {
  explicit LazySgdRule(OpKernelConstruction* ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("hogwild", &hogwild));
  }

  static constexpr char kOp[] = "ResourceSparseInputGatherMatmulGradLazySgd";
  using Input = SparseInputGatherMatmulGradLazySgdInput;
  static std::vector<std::pair<const char*, int>> Variables() {
    return {{"weights", Input::kWeights}};
  }

  absl::Status Read(OpKernelContext* ctx, UpdatableVariables* vars) {
    const Tensor& lr = ctx->input(Input::kLr);
    if (lr.NumElements() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": lr must be a scalar, got shape ", lr.shape().DebugString()));
    }
    learning_rate = lr.flat<float>()(0);
    return absl::OkStatus();
  }

  void Apply(const GatherMatmulShape& shape, const SparseRowsView& inputs,
             const int32_t* indices, const float* grad_out, const RowGroups& rows,
             UpdatableVariables* vars, float* grad_values, float* grad_bias_rows,
             const ParallelFor& parallel_for) const {
    const auto backward = hogwild ? SparseInputGatherMatmulBackwardHogwildSgd
                                  : SparseInputGatherMatmulBackwardLazySgd;
    backward(shape, inputs, indices, grad_out, rows, learning_rate, vars->data(0), grad_values,
             grad_bias_rows, parallel_for);
  }

  bool hogwild = false;
  float learning_rate;
};

// The weights' gradient goes straight into a lazy update weight by weight (`Rule`: Adam on the
// weights and their moments, or SGD), in place; the values' and biases' gradients are returned.
template <typename Rule>
class SparseInputGatherMatmulGradLazyOp : public OpKernel {
 public:
  explicit SparseInputGatherMatmulGradLazyOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), rule_(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    constexpr const char* kOp = Rule::kOp;
    using Input = typename Rule::Input;
    SparseRows rows;
    OP_REQUIRES_OK(ctx, CheckSparseInputs(kOp, ctx, &rows));
    UpdatableVariables vars;
    OP_REQUIRES_OK(ctx, vars.Init(ctx, kOp, Rule::Variables()));
    const Tensor& weights = *vars.tensor(0);
    const Tensor& indices = ctx->input(Input::kIndices);
    const Tensor& grad_output = ctx->input(Input::kGradOutput);
    GatherMatmulShape shape;
    OP_REQUIRES_OK(ctx, CheckArguments(kOp, ctx, rows, weights, nullptr, indices, &shape));
    Rule rule = rule_;  // the attributes, then this call's scalars
    OP_REQUIRES_OK(ctx, rule.Read(ctx, &vars));
    vars.AdviseHugePagesFor(indices.NumElements());
    OP_REQUIRES(ctx, grad_output.shape() == indices.shape(),
                absl::InvalidArgumentError(absl::StrCat(
                    kOp, ": grad_output has shape ", grad_output.shape().DebugString(),
                    "; it must match indices, ", indices.shape().DebugString())));
    OP_REQUIRES_OK(ctx, GroupSparseRows(ctx, &rows));
    const ActiveRows active(indices.flat<int32_t>().data(), indices.NumElements(),
                            TfParallelFor(ctx), shape.num_neurons);
    Tensor *grad_values = nullptr, *row_ids = nullptr, *grad_bias_rows = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(SparseTensorInput::kValues).shape(),
                                             &grad_values));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({active.size()}), &row_ids));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({active.size()}), &grad_bias_rows));
    std::copy(active.ids().begin(), active.ids().end(), row_ids->flat<int32_t>().data());
    std::vector<float> grad_csr(rows.values.size());
    rule.Apply(shape, rows.view(), indices.flat<int32_t>().data(),
               grad_output.flat<float>().data(), active.view(), &vars, grad_csr.data(),
               grad_bias_rows->flat<float>().data(), TfParallelFor(ctx));
    rows.ToEntryOrder(grad_csr, grad_values->flat<float>().data());
  }

 private:
  const Rule rule_;
};

// Serves SparseInputMatmul (the kernel as a tensor) and ResourceSparseInputMatmul (as a
// variable, read in place).
class SparseInputMatmulOp : public OpKernel {
 public:
  explicit SparseInputMatmulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const char* kOp = OpName(*this);
    SparseRows rows;
    InputTensor kernel_input;
    OP_REQUIRES_OK(ctx, ReadSparseInputsAndKernel(ctx, kOp, &rows, &kernel_input));
    const Tensor& kernel = kernel_input.tensor();
    kernel_input.AdviseHugePagesFor(rows.feature_ids.size());  // a kernel row per entry
    const int64_t units = kernel.dim_size(1);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows.batch, units}), &output));
    OP_REQUIRES_OK(ctx, GroupSparseRows(ctx, &rows));
    SparseInputMatmulForward(rows.batch, units, rows.view(), kernel.flat<float>().data(),
                             output->flat<float>().data(), TfParallelFor(ctx));
  }
};

class SparseInputMatmulGradOp : public OpKernel {
 public:
  explicit SparseInputMatmulGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("values_gradient", &values_gradient_));
  }

  void Compute(OpKernelContext* ctx) override {
    const char* kOp = OpName(*this);
    SparseRows rows;
    InputTensor kernel_input;
    OP_REQUIRES_OK(ctx, ReadSparseInputsAndKernel(ctx, kOp, &rows, &kernel_input));
    const Tensor& kernel = kernel_input.tensor();
    kernel_input.AdviseHugePagesFor(rows.feature_ids.size());
    const Tensor& grad_output = ctx->input(SparseInputMatmulInput::kGradOutput);
    const int64_t units = kernel.dim_size(1);
    OP_REQUIRES_OK(ctx, CheckGradOutput(kOp, grad_output, rows.batch, units));
    OP_REQUIRES_OK(ctx, GroupSparseRows(ctx, &rows));
    const ActiveRows grouped = GroupByFeature(ctx, rows, kernel.dim_size(0));
    Tensor *grad_values = nullptr, *row_ids = nullptr, *grad_kernel_rows = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0,
                            values_gradient_ ? ctx->input(SparseTensorInput::kValues).shape()
                                             : TensorShape({0}),
                            &grad_values));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({grouped.size()}), &row_ids));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({grouped.size(), units}),
                                             &grad_kernel_rows));
    std::copy(grouped.ids().begin(), grouped.ids().end(), row_ids->flat<int32_t>().data());
    std::vector<float> grad_csr(values_gradient_ ? rows.values.size() : 0);
    SparseInputMatmulBackward(rows.batch, units, rows.view(), kernel.flat<float>().data(),
                              grad_output.flat<float>().data(), grouped.view(),
                              values_gradient_ ? grad_csr.data() : nullptr,
                              grad_kernel_rows->flat<float>().data(), TfParallelFor(ctx));
    if (values_gradient_) rows.ToEntryOrder(grad_csr, grad_values->flat<float>().data());
  }

 private:
  bool values_gradient_ = true;
};

// The rules of the first layer's fused update: the variables beside the kernel, their
// checks, the scalars, and the core function called.

// Lazy Adam: with both moments (ResourceSparseInputMatmulGradAdam), or without the first
// (beta1 = 0, ResourceSparseInputMatmulGradAdamNoMomentum).
template <bool kFirstMoment>
struct FusedAdamRule {
  static constexpr const char* kOp = kFirstMoment
                                         ? "ResourceSparseInputMatmulGradAdam"
                                         : "ResourceSparseInputMatmulGradAdamNoMomentum";
  using Input = std::conditional_t<kFirstMoment, SparseInputMatmulGradAdamInput,
                                   SparseInputMatmulGradSecondMomentInput>;
  static std::vector<std::pair<const char*, int>> Variables() {
    if constexpr (kFirstMoment) {
      return {{"kernel", Input::kKernel},
              {"kernel_m", Input::kKernelM},
              {"kernel_v", Input::kKernelV}};
    } else {
      return {{"kernel", Input::kKernel}, {"kernel_v", Input::kKernelV}};
    }
  }

  absl::Status ReadScalars(OpKernelContext* ctx) {
    return kFirstMoment ? ReadAdamInputs(ctx, kOp, Input::kLr, &hyper)
                        : ReadAdamNoMomentumInputs(ctx, kOp, Input::kLr, &hyper);
  }

  // Each moment must have the kernel's shape.
  static absl::Status CheckMoments(UpdatableVariables* vars) {
    const std::vector<std::pair<const char*, int>> variables = Variables();
    for (int i = 1; i < static_cast<int>(variables.size()); ++i) {
      TF_RETURN_IF_ERROR(vars->CheckSameShape(kOp, i, variables[i].first, 0, "kernel"));
    }
    return absl::OkStatus();
  }

  void Apply(int64_t batch, int64_t units, const SparseRowsView& inputs, const float* grad_out,
             const RowGroups& features, UpdatableVariables* vars,
             const ParallelFor& parallel_for) const {
    const AdamState kernel{vars->data(0), kFirstMoment ? vars->data(1) : nullptr,
                           vars->data(kFirstMoment ? 2 : 1)};
    SparseInputMatmulBackwardAdam(batch, units, inputs, grad_out, features, hyper, kernel,
                                  parallel_for);
  }

  AdamHyperparameters hyper;
};

struct FusedRowwiseRmspropRule {
  static constexpr char kOp[] = "ResourceSparseInputMatmulGradRowwiseRmsprop";
  using Input = SparseInputMatmulGradSecondMomentInput;
  static std::vector<std::pair<const char*, int>> Variables() {
    return {{"kernel", Input::kKernel}, {"kernel_v", Input::kKernelV}};
  }

  absl::Status ReadScalars(OpKernelContext* ctx) {
    return ReadRowwiseRmspropInputs(ctx, kOp, Input::kLr, &hyper);
  }

  static absl::Status CheckMoments(UpdatableVariables* vars) {
    return CheckRowwiseMoment(kOp, "kernel_v", *vars->tensor(1), "kernel", *vars->tensor(0));
  }

  void Apply(int64_t batch, int64_t units, const SparseRowsView& inputs, const float* grad_out,
             const RowGroups& features, UpdatableVariables* vars,
             const ParallelFor& parallel_for) const {
    SparseInputMatmulBackwardRowwiseRmsprop(batch, units, inputs, grad_out, features, hyper,
                                            vars->data(0), vars->data(1), parallel_for);
  }

  RowwiseRmspropHyperparameters hyper;
};

// The kernel's gradient rows go straight into a lazy update of the kernel (`Rule`: Adam with
// its moments or without the first, or rowwise RMSprop with a moment per row), in place.
template <typename Rule>
class SparseInputMatmulGradUpdateOp : public OpKernel {
 public:
  explicit SparseInputMatmulGradUpdateOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    constexpr const char* kOp = Rule::kOp;
    Rule rule;
    OP_REQUIRES_OK(ctx, rule.ReadScalars(ctx));
    SparseRows rows;
    OP_REQUIRES_OK(ctx, CheckSparseInputs(kOp, ctx, &rows));
    UpdatableVariables vars;
    OP_REQUIRES_OK(ctx, vars.Init(ctx, kOp, Rule::Variables()));
    const Tensor& kernel = *vars.tensor(0);
    OP_REQUIRES_OK(ctx, CheckKernel(ctx, kOp, rows, kernel));
    OP_REQUIRES_OK(ctx, Rule::CheckMoments(&vars));
    vars.AdviseHugePagesFor(rows.feature_ids.size());
    const int64_t units = kernel.dim_size(1);
    const Tensor& grad_output = ctx->input(Rule::Input::kGradOutput);
    OP_REQUIRES_OK(ctx, CheckGradOutput(kOp, grad_output, rows.batch, units));
    OP_REQUIRES_OK(ctx, GroupSparseRows(ctx, &rows));
    const ActiveRows grouped = GroupByFeature(ctx, rows, kernel.dim_size(0));
    rule.Apply(rows.batch, units, rows.view(), grad_output.flat<float>().data(), grouped.view(),
               &vars, TfParallelFor(ctx));
  }
};

REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseInputGatherMatmul").Device(tensorflow::DEVICE_CPU),
                        SparseInputGatherMatmulOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseInputProducts").Device(tensorflow::DEVICE_CPU),
                        SparseInputProductsOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseInputGatherMatmulGrad").Device(tensorflow::DEVICE_CPU),
                        SparseInputGatherMatmulGradOp);
REGISTER_KERNEL_BUILDER(
    Name("TfLsh>ResourceSparseInputGatherMatmulGradLazyAdam").Device(tensorflow::DEVICE_CPU),
    SparseInputGatherMatmulGradLazyOp<LazyAdamRule>);
REGISTER_KERNEL_BUILDER(
    Name("TfLsh>ResourceSparseInputGatherMatmulGradLazySgd").Device(tensorflow::DEVICE_CPU),
    SparseInputGatherMatmulGradLazyOp<LazySgdRule>);
REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseInputMatmul").Device(tensorflow::DEVICE_CPU),
                        SparseInputMatmulOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseInputMatmulGrad").Device(tensorflow::DEVICE_CPU),
                        SparseInputMatmulGradOp);
REGISTER_KERNEL_BUILDER(
    Name("TfLsh>ResourceSparseInputMatmulGradRowwiseRmsprop").Device(tensorflow::DEVICE_CPU),
    SparseInputMatmulGradUpdateOp<FusedRowwiseRmspropRule>);
REGISTER_KERNEL_BUILDER(Name("TfLsh>ResourceSparseInputMatmul").Device(tensorflow::DEVICE_CPU),
                        SparseInputMatmulOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>ResourceSparseInputMatmulGrad").Device(tensorflow::DEVICE_CPU),
                        SparseInputMatmulGradOp);
REGISTER_KERNEL_BUILDER(
    Name("TfLsh>ResourceSparseInputMatmulGradAdam").Device(tensorflow::DEVICE_CPU),
    SparseInputMatmulGradUpdateOp<FusedAdamRule</*kFirstMoment=*/true>>);
REGISTER_KERNEL_BUILDER(
    Name("TfLsh>ResourceSparseInputMatmulGradAdamNoMomentum").Device(tensorflow::DEVICE_CPU),
    SparseInputMatmulGradUpdateOp<FusedAdamRule</*kFirstMoment=*/false>>);

}  // namespace tf_lsh
