// Kernels that make hash parameters from a seed: the same seed gives the same tensors anywhere.
#include <cstdint>
#include <limits>

#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/lsh_hash.h"
#include "tf_lsh_ops/cc/kernels/input_checks.h"

namespace tf_lsh {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

namespace {

// LshSrpProjections and LshWtaBins take one input.
struct ParamsInput {
  enum : int { kSeed };
};

}  // namespace

class LshSrpProjectionsOp : public OpKernel {
 public:
  explicit LshSrpProjectionsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dim", &dim_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("total_hashes", &total_hashes_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("density", &density_));
    OP_REQUIRES(ctx, density_ > 0.f && density_ <= 1.f,
                absl::InvalidArgumentError(absl::StrCat(
                    "LshSrpProjections: density must be in (0, 1], got ", density_)));
  }

  void Compute(OpKernelContext* ctx) override {
    int64_t seed;
    OP_REQUIRES_OK(ctx,
                   ReadScalar("LshSrpProjections", "seed", ctx->input(ParamsInput::kSeed), &seed));
    Tensor* projections = nullptr;
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, "LshSrpProjections", 0, {dim_, total_hashes_},
                                       &projections));
    MakeSrpProjections(dim_, total_hashes_, density_, seed, projections->flat<float>().data());
  }

 private:
  int64_t dim_, total_hashes_;
  float density_;
};

class LshWtaBinsOp : public OpKernel {
 public:
  explicit LshWtaBinsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dim", &dim_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("total_hashes", &total_hashes_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bin_size", &bin_size_));
    OP_REQUIRES(ctx, (bin_size_ & (bin_size_ - 1)) == 0 && bin_size_ <= dim_,
                absl::InvalidArgumentError(absl::StrCat(
                    "LshWtaBins: bin_size must be a power of two no larger than dim = ", dim_,
                    ", got ", bin_size_)));
    // Bins hold int32 coordinates.
    OP_REQUIRES(ctx, dim_ <= std::numeric_limits<int32_t>::max(),
                absl::InvalidArgumentError(absl::StrCat(
                    "LshWtaBins: dim must be at most 2^31 - 1, got ", dim_)));
  }

  void Compute(OpKernelContext* ctx) override {
    int64_t seed;
    OP_REQUIRES_OK(ctx, ReadScalar("LshWtaBins", "seed", ctx->input(ParamsInput::kSeed), &seed));
    Tensor* bins = nullptr;
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, "LshWtaBins", 0, {total_hashes_, bin_size_}, &bins));
    MakeWtaBins(dim_, total_hashes_, bin_size_, seed, bins->flat<int32_t>().data());
  }

 private:
  int64_t dim_, total_hashes_, bin_size_;
};

REGISTER_KERNEL_BUILDER(Name("TfLsh>LshSrpProjections").Device(tensorflow::DEVICE_CPU),
                        LshSrpProjectionsOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>LshWtaBins").Device(tensorflow::DEVICE_CPU), LshWtaBinsOp);

}  // namespace tf_lsh
