// Kernels of SparseAdamApply (var, m, v), SparseAdamNoMomentumApply (var, v) and
// SparseRowwiseRmspropApply (var and a moment per row): lock the variables, check the update,
// call the core in place.
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tf_lsh_ops/cc/core/sparse_adam.h"
#include "tf_lsh_ops/cc/kernels/adam_inputs.h"
#include "tf_lsh_ops/cc/kernels/thread_pool.h"
#include "tf_lsh_ops/cc/kernels/variable_access.h"

namespace tf_lsh {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

namespace {

constexpr char kOp[] = "SparseAdamApply";
constexpr char kNoMomentumOp[] = "SparseAdamNoMomentumApply";
constexpr char kRowwiseOp[] = "SparseRowwiseRmspropApply";

// Input indices, in the order of the op's registration; Adam's scalars (adam_inputs.h) from kLr.
struct SparseAdamApplyInput {
  enum : int { kVar, kM, kV, kIndices, kGrad, kLr };
};

// The same for the ops that keep a second moment only (SparseAdamNoMomentumApply,
// SparseRowwiseRmspropApply), whose scalars are lr, beta2, epsilon, beta2_power.
struct SecondMomentInput {
  enum : int { kVar, kV, kIndices, kGrad, kLr };
};

// Checks `indices` and `grad` of a sparse update of `var` (rank >= 1) and returns the rows as
// int32 in `rows`; `dim` is the size of a row.
template <typename Index>
absl::Status ReadSparseRows(const char* op, const Tensor& var, const Tensor& indices,
                            const Tensor& grad, std::vector<int32_t>* rows, int64_t* dim) {
  const int64_t num_rows = var.dim_size(0);
  *dim = num_rows > 0 ? var.NumElements() / num_rows : 0;
  if (indices.dims() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": indices must have rank 1, got ", indices.shape().DebugString()));
  }
  bool same_rows = grad.dims() == var.dims() && grad.dim_size(0) == indices.dim_size(0);
  for (int d = 1; same_rows && d < var.dims(); ++d) {
    same_rows = grad.dim_size(d) == var.dim_size(d);
  }
  if (!same_rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": grad has shape ", grad.shape().DebugString(), "; expected [",
        indices.dim_size(0), "] + var's row shape (var has shape ", var.shape().DebugString(),
        ", indices has shape ", indices.shape().DebugString(), ")"));
  }
  if (num_rows >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": var has ", num_rows, " rows; at most 2^31 - 1 are supported"));
  }
  const auto index = indices.flat<Index>();
  rows->resize(index.size());
  for (int64_t i = 0; i < index.size(); ++i) {
    if (index(i) < 0 || index(i) >= num_rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": indices[", i, "] = ", index(i), " is outside [0, ", num_rows,
          ") (var has shape ", var.shape().DebugString(), ")"));
    }
    (*rows)[i] = static_cast<int32_t>(index(i));
  }
  return absl::OkStatus();
}

}  // namespace

// SparseAdamApply (kFirstMoment) and SparseAdamNoMomentumApply (beta1 = 0, no m).
template <typename Index, bool kFirstMoment>
class SparseAdamApplyOp : public OpKernel {
 public:
  explicit SparseAdamApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    using Input = std::conditional_t<kFirstMoment, SparseAdamApplyInput, SecondMomentInput>;
    const char* op = kFirstMoment ? kOp : kNoMomentumOp;
    AdamHyperparameters hyper;
    OP_REQUIRES_OK(ctx, kFirstMoment ? ReadAdamInputs(ctx, op, Input::kLr, &hyper)
                                     : ReadAdamNoMomentumInputs(ctx, op, Input::kLr, &hyper));
    std::vector<std::pair<const char*, int>> inputs = {{"var", Input::kVar}};
    if (kFirstMoment) inputs.push_back({"m", SparseAdamApplyInput::kM});
    inputs.push_back({"v", Input::kV});
    UpdatableVariables vars;
    OP_REQUIRES_OK(ctx, vars.Init(ctx, op, inputs));
    const Tensor& var = *vars.tensor(0);
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Tensor& t = *vars.tensor(i);
      OP_REQUIRES(ctx, t.dims() >= 1 && t.shape() == var.shape(),
                  absl::InvalidArgumentError(absl::StrCat(
                      op, ": ", inputs[i].first, " has shape ", t.shape().DebugString(), "; var",
                      kFirstMoment ? ", m and v" : " and v",
                      " must share one shape of rank >= 1, var has ",
                      var.shape().DebugString())));
    }
    const Tensor& indices = ctx->input(Input::kIndices);
    vars.AdviseHugePagesFor(indices.NumElements());
    const Tensor& grad = ctx->input(Input::kGrad);
    std::vector<int32_t> rows;
    int64_t dim;
    OP_REQUIRES_OK(ctx, ReadSparseRows<Index>(op, var, indices, grad, &rows, &dim));
    float* m = kFirstMoment ? vars.data(1) : nullptr;
    SparseAdamApply(hyper, dim, rows.data(), grad.flat<float>().data(), rows.size(),
                    vars.data(0), m, vars.data(inputs.size() - 1), TfParallelFor(ctx));
  }
};

template <typename Index>
class SparseRowwiseRmspropApplyOp : public OpKernel {
 public:
  explicit SparseRowwiseRmspropApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    RowwiseRmspropHyperparameters hyper;
    OP_REQUIRES_OK(ctx, ReadRowwiseRmspropInputs(ctx, kRowwiseOp, SecondMomentInput::kLr, &hyper));
    UpdatableVariables vars;
    OP_REQUIRES_OK(ctx, vars.Init(ctx, kRowwiseOp,
                                  {{"var", SecondMomentInput::kVar}, {"v", SecondMomentInput::kV}}));
    const Tensor& var = *vars.tensor(0);
    OP_REQUIRES_OK(ctx, CheckRowwiseMoment(kRowwiseOp, "v", *vars.tensor(1), "var", var));
    const Tensor& indices = ctx->input(SecondMomentInput::kIndices);
    std::vector<int32_t> rows;
    int64_t dim;
    const Tensor& grad = ctx->input(SecondMomentInput::kGrad);
    OP_REQUIRES_OK(ctx, ReadSparseRows<Index>(kRowwiseOp, var, indices, grad, &rows, &dim));
    SparseRowwiseRmspropApply(hyper, dim, rows.data(), grad.flat<float>().data(), rows.size(),
                              vars.data(0), vars.data(1), TfParallelFor(ctx));
  }
};

REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseAdamApply")
                            .Device(tensorflow::DEVICE_CPU)
                            .TypeConstraint<int32_t>("Tindices"),
                        SparseAdamApplyOp<int32_t, true>);
REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseAdamApply")
                            .Device(tensorflow::DEVICE_CPU)
                            .TypeConstraint<int64_t>("Tindices"),
                        SparseAdamApplyOp<int64_t, true>);
REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseAdamNoMomentumApply")
                            .Device(tensorflow::DEVICE_CPU)
                            .TypeConstraint<int32_t>("Tindices"),
                        SparseAdamApplyOp<int32_t, false>);
REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseAdamNoMomentumApply")
                            .Device(tensorflow::DEVICE_CPU)
                            .TypeConstraint<int64_t>("Tindices"),
                        SparseAdamApplyOp<int64_t, false>);
REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseRowwiseRmspropApply")
                            .Device(tensorflow::DEVICE_CPU)
                            .TypeConstraint<int32_t>("Tindices"),
                        SparseRowwiseRmspropApplyOp<int32_t>);
REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseRowwiseRmspropApply")
                            .Device(tensorflow::DEVICE_CPU)
                            .TypeConstraint<int64_t>("Tindices"),
                        SparseRowwiseRmspropApplyOp<int64_t>);

}  // namespace tf_lsh
