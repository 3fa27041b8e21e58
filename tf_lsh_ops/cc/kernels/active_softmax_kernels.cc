// CPU kernel of ActiveSoftmaxCrossEntropy: validate, allocate, call the core.
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/active_softmax.h"
#include "tf_lsh_ops/cc/kernels/input_checks.h"
#include "tf_lsh_ops/cc/kernels/thread_pool.h"

namespace tf_lsh {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

namespace {

// Input indices, in the order of the op's registration.
struct ActiveSoftmaxCrossEntropyInput {
  enum : int { kIds, kLogits, kLabels };
};

}  // namespace

class ActiveSoftmaxCrossEntropyOp : public OpKernel {
 public:
  explicit ActiveSoftmaxCrossEntropyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    constexpr char kOp[] = "ActiveSoftmaxCrossEntropy";
    const Tensor& ids = ctx->input(ActiveSoftmaxCrossEntropyInput::kIds);
    const Tensor& logits = ctx->input(ActiveSoftmaxCrossEntropyInput::kLogits);
    const Tensor& labels = ctx->input(ActiveSoftmaxCrossEntropyInput::kLabels);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "ids", ids, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "logits", logits, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "labels", labels, 2));
    // ids [1, K] is one active set for the whole batch.
    if (ids.dim_size(0) != 1) {
      OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "ids", ids, 0, "logits", logits, 0));
    }
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "ids", ids, 1, "logits", logits, 1));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "logits", logits, 0, "labels", labels, 0));
    Tensor *loss = nullptr, *grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, logits.shape(), &grad));
    loss->scalar<float>()() = ActiveSoftmaxCrossEntropy(
        logits.dim_size(0), logits.dim_size(1), labels.dim_size(1), ids.dim_size(0),
        ids.flat<int32_t>().data(), logits.flat<float>().data(), labels.flat<int32_t>().data(),
        grad->flat<float>().data(), TfParallelFor(ctx));
  }
};

REGISTER_KERNEL_BUILDER(Name("TfLsh>ActiveSoftmaxCrossEntropy").Device(tensorflow::DEVICE_CPU),
                        ActiveSoftmaxCrossEntropyOp);

}  // namespace tf_lsh
