// Kernel of SparseAdamApply: locks var, m and v, checks the update, calls the core in place.
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

// Input indices, in the order of the op's registration; Adam's scalars (adam_inputs.h) from kLr.
struct SparseAdamApplyInput {
  enum : int { kVar, kM, kV, kIndices, kGrad, kLr };
};

}  // namespace

template <typename Index>
class SparseAdamApplyOp : public OpKernel {
 public:
  explicit SparseAdamApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    AdamHyperparameters hyper;
    OP_REQUIRES_OK(ctx, ReadAdamInputs(ctx, kOp, SparseAdamApplyInput::kLr, &hyper));
    UpdatableVariables vars;
    OP_REQUIRES_OK(ctx, vars.Init(ctx, kOp,
                                  {{"var", SparseAdamApplyInput::kVar},
                                   {"m", SparseAdamApplyInput::kM},
                                   {"v", SparseAdamApplyInput::kV}}));
    const char* names[3] = {"var", "m", "v"};
    const Tensor& var = *vars.tensor(0);
    for (int i = 0; i < 3; ++i) {
      const Tensor& t = *vars.tensor(i);
      OP_REQUIRES(ctx, t.dims() >= 1 && t.shape() == var.shape(),
                  absl::InvalidArgumentError(absl::StrCat(
                      kOp, ": ", names[i], " has shape ", t.shape().DebugString(),
                      "; var, m and v must share one shape of rank >= 1, var has ",
                      var.shape().DebugString())));
    }
    const Tensor& indices = ctx->input(SparseAdamApplyInput::kIndices);
    const Tensor& grad = ctx->input(SparseAdamApplyInput::kGrad);
    vars.AdviseHugePagesFor(indices.NumElements());
    const int64_t num_rows = var.dim_size(0);
    const int64_t dim = num_rows > 0 ? var.NumElements() / num_rows : 0;
    OP_REQUIRES(ctx, indices.dims() == 1,
                absl::InvalidArgumentError(absl::StrCat(kOp, ": indices must have rank 1, got ",
                                                        indices.shape().DebugString())));
    bool same_rows = grad.dims() == var.dims() && grad.dim_size(0) == indices.dim_size(0);
    for (int d = 1; same_rows && d < var.dims(); ++d) {
      same_rows = grad.dim_size(d) == var.dim_size(d);
    }
    OP_REQUIRES(ctx, same_rows,
                absl::InvalidArgumentError(absl::StrCat(
                    kOp, ": grad has shape ", grad.shape().DebugString(), "; expected [",
                    indices.dim_size(0), "] + var's row shape (var has shape ",
                    var.shape().DebugString(), ", indices has shape ",
                    indices.shape().DebugString(), ")")));
    OP_REQUIRES(ctx, num_rows < (int64_t{1} << 31),
                absl::InvalidArgumentError(absl::StrCat(kOp, ": var has ", num_rows,
                                                        " rows; at most 2^31 - 1 are supported")));
    const auto index = indices.flat<Index>();
    std::vector<int32_t> rows(index.size());
    for (int64_t i = 0; i < index.size(); ++i) {
      OP_REQUIRES(ctx, index(i) >= 0 && index(i) < num_rows,
                  absl::InvalidArgumentError(absl::StrCat(
                      kOp, ": indices[", i, "] = ", index(i), " is outside [0, ", num_rows,
                      ") (var has shape ", var.shape().DebugString(), ")")));
      rows[i] = static_cast<int32_t>(index(i));
    }

    SparseAdamApply(hyper, dim, rows.data(), grad.flat<float>().data(), index.size(),
                    vars.data(0), vars.data(1), vars.data(2), TfParallelFor(ctx));
  }
};

REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseAdamApply")
                            .Device(tensorflow::DEVICE_CPU)
                            .TypeConstraint<int32_t>("Tindices"),
                        SparseAdamApplyOp<int32_t>);
REGISTER_KERNEL_BUILDER(Name("TfLsh>SparseAdamApply")
                            .Device(tensorflow::DEVICE_CPU)
                            .TypeConstraint<int64_t>("Tindices"),
                        SparseAdamApplyOp<int64_t>);

}  // namespace tf_lsh
