// Kernel of SparseAdamApply: locks var, m and v, checks the update, calls the core in place.
#include <algorithm>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tf_lsh_ops/cc/core/huge_pages.h"
#include "tf_lsh_ops/cc/core/sparse_adam.h"
#include "tf_lsh_ops/cc/kernels/thread_pool.h"

namespace tf_lsh {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::Var;

namespace {

constexpr char kOp[] = "SparseAdamApply";

// A reader (e.g. a ReadVariableOp snapshot) may still hold the buffer: give the variable a
// private copy first, as TensorFlow's own apply ops do, unless reads already copy.
absl::Status PrepareForUpdate(OpKernelContext* ctx, Var* var) {
  Tensor* tensor = var->tensor();
  if (tensor->RefCountIsOne() || var->copy_on_read_mode.load()) return absl::OkStatus();
  Tensor copy;
  TF_RETURN_IF_ERROR(ctx->allocate_temp(tensor->dtype(), tensor->shape(), &copy));
  std::memcpy(copy.flat<float>().data(), tensor->flat<float>().data(),
              tensor->NumElements() * sizeof(float));
  *tensor = copy;
  return absl::OkStatus();
}

float Scalar(OpKernelContext* ctx, int index) { return ctx->input(index).flat<float>()(0); }

}  // namespace

template <typename Index>
class SparseAdamApplyOp : public OpKernel {
 public:
  explicit SparseAdamApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    for (int i = 5; i <= 10; ++i) {
      OP_REQUIRES(ctx, ctx->input(i).NumElements() == 1,
                  absl::InvalidArgumentError(absl::StrCat(
                      kOp, ": hyperparameter input ", i, " must be a scalar, got shape ",
                      ctx->input(i).shape().DebugString())));
    }
    const char* names[3] = {"var", "m", "v"};
    tensorflow::core::RefCountPtr<Var> vars[3];
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES_OK(ctx, LookupResource(ctx, tensorflow::HandleFromInput(ctx, i), &vars[i]));
    }
    // Exclusive locks in address order, so concurrent updates cannot deadlock.
    std::vector<decltype(vars[0]->mu())> mutexes = {vars[0]->mu(), vars[1]->mu(), vars[2]->mu()};
    std::sort(mutexes.begin(), mutexes.end());
    mutexes.erase(std::unique(mutexes.begin(), mutexes.end()), mutexes.end());
    std::vector<std::unique_ptr<tsl::mutex_lock>> locks;
    for (auto* mu : mutexes) locks.push_back(std::make_unique<tsl::mutex_lock>(*mu));

    const Tensor& var = *vars[0]->tensor();
    for (int i = 0; i < 3; ++i) {
      const Tensor& t = *vars[i]->tensor();
      OP_REQUIRES(ctx, vars[i]->is_initialized && t.dtype() == tensorflow::DT_FLOAT,
                  absl::InvalidArgumentError(absl::StrCat(
                      kOp, ": ", names[i], " must be an initialized float32 variable")));
      OP_REQUIRES(ctx, t.dims() >= 1 && t.shape() == var.shape(),
                  absl::InvalidArgumentError(absl::StrCat(
                      kOp, ": ", names[i], " has shape ", t.shape().DebugString(),
                      "; var, m and v must share one shape of rank >= 1, var has ",
                      var.shape().DebugString())));
    }
    const Tensor& indices = ctx->input(3);
    const Tensor& grad = ctx->input(4);
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
    for (auto& v : vars) {
      OP_REQUIRES_OK(ctx, PrepareForUpdate(ctx, v.get()));
      // Touched rows are scattered over the whole variable (core/huge_pages.h).
      AdviseHugePages(v->tensor()->tensor_data().data(), v->tensor()->TotalBytes());
    }

    const float beta1_power = Scalar(ctx, 9), beta2_power = Scalar(ctx, 10);
    const AdamHyperparameters hyper{
        Scalar(ctx, 5) * std::sqrt(1.f - beta2_power) / (1.f - beta1_power), Scalar(ctx, 6),
        Scalar(ctx, 7), Scalar(ctx, 8)};
    SparseAdamApply(hyper, dim, rows.data(), grad.flat<float>().data(), index.size(),
                    vars[0]->tensor()->flat<float>().data(),
                    vars[1]->tensor()->flat<float>().data(),
                    vars[2]->tensor()->flat<float>().data(), TfParallelFor(ctx));
  }
};

REGISTER_KERNEL_BUILDER(
    Name("SparseAdamApply").Device(tensorflow::DEVICE_CPU).TypeConstraint<int32_t>("Tindices"),
    SparseAdamApplyOp<int32_t>);
REGISTER_KERNEL_BUILDER(
    Name("SparseAdamApply").Device(tensorflow::DEVICE_CPU).TypeConstraint<int64_t>("Tindices"),
    SparseAdamApplyOp<int64_t>);

}  // namespace tf_lsh
