// Kernel of ResourceAssignRows: locks the variable, checks the rows, copies them in place.
#include <cstring>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/kernels/input_checks.h"
#include "tf_lsh_ops/cc/kernels/variable_access.h"

namespace tf_lsh {

namespace {

constexpr char kOp[] = "ResourceAssignRows";

}  // namespace

class ResourceAssignRowsOp : public tensorflow::OpKernel {
 public:
  explicit ResourceAssignRowsOp(tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(tensorflow::OpKernelContext* ctx) override {
    UpdatableVariables vars;
    OP_REQUIRES_OK(ctx, vars.Init(ctx, kOp, {{"var", 0}}));
    const tensorflow::Tensor& var = *vars.tensor(0);
    const tensorflow::Tensor& start_input = ctx->input(1);
    const tensorflow::Tensor& values = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "var", var, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "start", start_input, 0));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "values", values, 2));
    const int64_t start = start_input.scalar<int64_t>()();
    OP_REQUIRES(ctx, values.dim_size(1) == var.dim_size(1),
                absl::InvalidArgumentError(absl::StrCat(
                    kOp, ": values has shape ", values.shape().DebugString(), "; its rows must be ",
                    var.dim_size(1), " wide, as var's (shape ", var.shape().DebugString(), ")")));
    const int64_t rows = values.dim_size(0);
    OP_REQUIRES(ctx, start >= 0 && start <= var.dim_size(0) - rows,
                absl::InvalidArgumentError(absl::StrCat(
                    kOp, ": start = ", start, " with ", rows, " rows of values is outside var's ",
                    var.dim_size(0), " rows (start must be in [0, ", var.dim_size(0) - rows, "])")));
    if (values.NumElements() == 0) return;
    std::memcpy(vars.data(0) + start * var.dim_size(1), values.flat<float>().data(),
                values.NumElements() * sizeof(float));
  }
};

REGISTER_KERNEL_BUILDER(Name("TfLsh>ResourceAssignRows").Device(tensorflow::DEVICE_CPU),
                        ResourceAssignRowsOp);

}  // namespace tf_lsh
