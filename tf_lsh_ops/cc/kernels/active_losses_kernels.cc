// CPU kernels of the losses over active sets: validate, allocate, call the core.
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/active_losses.h"
#include "tf_lsh_ops/cc/kernels/input_checks.h"
#include "tf_lsh_ops/cc/kernels/thread_pool.h"

namespace tf_lsh {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

namespace {

// Input indices, in the order of the ops' registration.
struct ActiveLossInput {
  enum : int { kIds, kLogits, kLabels };
};

using ActiveLossFn = float (*)(int64_t batch, int64_t active, int64_t num_labels,
                               int64_t id_rows, const int32_t* ids, const float* logits,
                               const int32_t* labels, float* grad,
                               const ParallelFor& parallel_for);

constexpr char kSoftmaxOp[] = "ActiveSoftmaxCrossEntropy";
constexpr char kBinaryOp[] = "ActiveBinaryCrossEntropy";

}  // namespace

// The op `kOp`, computing `kLoss` (core/active_losses.h).
template <const char* kOp, ActiveLossFn kLoss>
class ActiveLossOp : public OpKernel {
 public:
  explicit ActiveLossOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ids = ctx->input(ActiveLossInput::kIds);
    const Tensor& logits = ctx->input(ActiveLossInput::kLogits);
    const Tensor& labels = ctx->input(ActiveLossInput::kLabels);
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
    loss->scalar<float>()() = kLoss(
        logits.dim_size(0), logits.dim_size(1), labels.dim_size(1), ids.dim_size(0),
        ids.flat<int32_t>().data(), logits.flat<float>().data(), labels.flat<int32_t>().data(),
        grad->flat<float>().data(), TfParallelFor(ctx));
  }
};

REGISTER_KERNEL_BUILDER(Name("TfLsh>ActiveSoftmaxCrossEntropy").Device(tensorflow::DEVICE_CPU),
                        ActiveLossOp<kSoftmaxOp, ActiveSoftmaxCrossEntropy>);
REGISTER_KERNEL_BUILDER(Name("TfLsh>ActiveBinaryCrossEntropy").Device(tensorflow::DEVICE_CPU),
                        ActiveLossOp<kBinaryOp, ActiveBinaryCrossEntropy>);

}  // namespace tf_lsh
