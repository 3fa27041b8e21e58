// CPU kernel of MatmulTopK: validate, allocate, call the core.
#include <limits>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/matmul_top_k.h"
#include "tf_lsh_ops/cc/kernels/input_checks.h"
#include "tf_lsh_ops/cc/kernels/thread_pool.h"

namespace tf_lsh {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

namespace {

// Input indices, in the order of the op's registration.
struct MatmulTopKInput {
  enum : int { kQueries, kKeys, kBiases };
};

}  // namespace

class MatmulTopKOp : public OpKernel {
 public:
  explicit MatmulTopKOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("k", &k_));
  }

  void Compute(OpKernelContext* ctx) override {
    constexpr char kOp[] = "MatmulTopK";
    const Tensor& queries = ctx->input(MatmulTopKInput::kQueries);
    const Tensor& keys = ctx->input(MatmulTopKInput::kKeys);
    const Tensor& biases = ctx->input(MatmulTopKInput::kBiases);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "queries", queries, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "keys", keys, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "biases", biases, 1));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "queries", queries, 1, "keys", keys, 1));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "keys", keys, 0, "biases", biases, 0));
    const int64_t units = keys.dim_size(0);
    OP_REQUIRES(ctx, k_ <= units,
                absl::InvalidArgumentError(absl::StrCat(
                    kOp, ": k = ", k_, " must be at most the number of units (dimension 0 of "
                    "keys, shape ", keys.shape().DebugString(), ")")));
    OP_REQUIRES(ctx, units <= std::numeric_limits<int32_t>::max(),
                absl::InvalidArgumentError(absl::StrCat(
                    kOp, ": keys has ", units, " units; at most 2^31 - 1 (ids are int32)")));
    Tensor* ids = nullptr;
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, kOp, 0, {queries.dim_size(0), k_}, &ids));
    // One task per thread of the pool: a unit shard beyond what the threads need restarts the
    // selection of its rows (at batch 8 and 64k units on 2 threads, 8 tasks took 1.4x as long
    // as 2).
    MatmulTopKSplit split;
    split.target_tasks = ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
    MatmulTopK(queries.dim_size(0), queries.dim_size(1), units, k_, queries.flat<float>().data(),
               keys.flat<float>().data(), biases.flat<float>().data(),
               ids->flat<int32_t>().data(), TfParallelFor(ctx), split);
  }

 private:
  int64_t k_;
};

REGISTER_KERNEL_BUILDER(Name("TfLsh>MatmulTopK").Device(tensorflow::DEVICE_CPU), MatmulTopKOp);

}  // namespace tf_lsh
