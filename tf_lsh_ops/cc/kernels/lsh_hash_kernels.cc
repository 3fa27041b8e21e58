// Kernels of the hash ops (SimHash and (densified) WTA, dense and sparse inputs).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/lsh_hash.h"
#include "tf_lsh_ops/cc/kernels/input_checks.h"
#include "tf_lsh_ops/cc/kernels/sparse_inputs.h"
#include "tf_lsh_ops/cc/kernels/thread_pool.h"
#include "tf_lsh_ops/cc/kernels/variable_access.h"

namespace tf_lsh {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

namespace {

// Input indices, in the order of the ops' registrations (ops/lsh_ops.cc). The resource twins
// (ResourceLshSrpHash, ResourceLshWtaHash) take theirs in the same order.
struct SrpHashInput {
  enum : int { kInputs, kProjections, kMaxNorm };
};
struct SrpHashSparseInput {
  enum : int { kProjections = SparseTensorInput::kNext, kMaxNorm };
};
struct WtaHashInput {
  enum : int { kInputs, kBins };
};
struct WtaHashSparseInput {
  enum : int { kBins = SparseTensorInput::kNext };
};

absl::Status ParseMips(OpKernelConstruction* ctx, MipsSide* mips) {
  std::string side;
  TF_RETURN_IF_ERROR(ctx->GetAttr("mips", &side));
  *mips = side == "data" ? MipsSide::kData : side == "query" ? MipsSide::kQuery : MipsSide::kNone;
  return absl::OkStatus();
}

// Common attrs and output allocation of the four hash ops.
class LshHashOpBase : public OpKernel {
 public:
  explicit LshHashOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_tables", &num_tables_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_hashes", &num_hashes_));
    // Checked before anything multiplies them (the op def only asks for >= 1).
    OP_REQUIRES(ctx, num_tables_ <= std::numeric_limits<int32_t>::max() / num_hashes_,
                absl::InvalidArgumentError(absl::StrCat(
                    OpName(*this), ": num_tables * num_hashes must be at most 2^31 - 1, got ",
                    num_tables_, " * ", num_hashes_)));
  }

 protected:
  LshShape Shape(int64_t batch, int64_t dim) const {
    return {batch, dim, num_tables_, num_hashes_};
  }

  int32_t* AllocateCodes(OpKernelContext* ctx, int64_t batch) {
    Tensor* codes = nullptr;
    const absl::Status status =
        AllocateOutput(ctx, OpName(*this), 0, {batch, num_tables_}, &codes);
    if (!status.ok()) {
      ctx->SetStatus(status);
      return nullptr;
    }
    return codes->flat<int32_t>().data();
  }

  int64_t num_tables_, num_hashes_;
};

class SrpHashOpBase : public LshHashOpBase {
 public:
  explicit SrpHashOpBase(OpKernelConstruction* ctx) : LshHashOpBase(ctx) {
    OP_REQUIRES_OK(ctx, ParseMips(ctx, &mips_));
    OP_REQUIRES(ctx, num_hashes_ <= 30,
                absl::InvalidArgumentError(absl::StrCat(
                    OpName(*this), ": num_hashes (bits per table) must be in [1, 30], got ",
                    num_hashes_)));
  }

 protected:
  // Checks projections [dim (+1 with MIPS), L * K] and max_norm against inputs of width `dim`.
  absl::Status CheckParams(const char* op, const Tensor& projections, const Tensor& max_norm,
                           int64_t dim) const {
    TF_RETURN_IF_ERROR(CheckRank(op, "projections", projections, 2));
    // Sparse rows are merged by int32 feature id (and dim + 1 must not overflow).
    if (dim > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": inputs of width ", dim, "; at most 2^31 - 1 features are supported"));
    }
    const int64_t rows = dim + (mips_ == MipsSide::kNone ? 0 : 1);
    if (projections.dim_size(0) != rows ||
        projections.dim_size(1) != num_tables_ * num_hashes_) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": projections must have shape [", rows, ", ", num_tables_ * num_hashes_,
          "] (input width ", dim, mips_ == MipsSide::kNone ? "" : " + 1 for MIPS",
          ", num_tables * num_hashes), got ", projections.shape().DebugString()));
    }
    if (max_norm.NumElements() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": max_norm must be a scalar, got ",
                                                     max_norm.shape().DebugString()));
    }
    if (mips_ == MipsSide::kData && !(max_norm.flat<float>()(0) > 0.f)) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": max_norm must be positive for mips='data', got ", max_norm.flat<float>()(0)));
    }
    return absl::OkStatus();
  }

  MipsSide mips_;
};

// Both LshSrpHash (a tensor) and ResourceLshSrpHash (a variable, read in place).
class LshSrpHashOp : public SrpHashOpBase {
 public:
  using SrpHashOpBase::SrpHashOpBase;

  void Compute(OpKernelContext* ctx) override {
    const char* kOp = OpName(*this);
    InputTensor input;
    OP_REQUIRES_OK(ctx, input.Init(ctx, kOp, "inputs", SrpHashInput::kInputs));
    const Tensor& inputs = input.tensor();
    const Tensor& projections = ctx->input(SrpHashInput::kProjections);
    const Tensor& max_norm = ctx->input(SrpHashInput::kMaxNorm);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "inputs", inputs, 2));
    OP_REQUIRES_OK(ctx, CheckParams(kOp, projections, max_norm, inputs.dim_size(1)));
    const LshShape shape = Shape(inputs.dim_size(0), inputs.dim_size(1));
    int32_t* codes = AllocateCodes(ctx, shape.batch);
    if (codes == nullptr) return;
    SrpHashDense(shape, inputs.flat<float>().data(), projections.flat<float>().data(), mips_,
                 max_norm.flat<float>()(0), codes, TfParallelFor(ctx));
  }
};

class LshSrpHashSparseOp : public SrpHashOpBase {
 public:
  using SrpHashOpBase::SrpHashOpBase;

  void Compute(OpKernelContext* ctx) override {
    constexpr char kOp[] = "LshSrpHashSparse";
    SparseRows rows;
    OP_REQUIRES_OK(ctx, CheckSparseInputs(kOp, ctx, &rows));
    const Tensor& projections = ctx->input(SrpHashSparseInput::kProjections);
    const Tensor& max_norm = ctx->input(SrpHashSparseInput::kMaxNorm);
    OP_REQUIRES_OK(ctx, CheckParams(kOp, projections, max_norm, rows.dim));
    const LshShape shape = Shape(rows.batch, rows.dim);
    int32_t* codes = AllocateCodes(ctx, shape.batch);
    if (codes == nullptr) return;
    OP_REQUIRES_OK(ctx, GroupSparseRows(ctx, &rows));
    SrpHashSparse(shape, rows.offsets(), rows.feature_ids.data(), rows.values.data(),
                  projections.flat<float>().data(), mips_, max_norm.flat<float>()(0), codes,
                  TfParallelFor(ctx));
  }
};

class WtaHashOpBase : public LshHashOpBase {
 public:
  explicit WtaHashOpBase(OpKernelConstruction* ctx) : LshHashOpBase(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("densified", &densified_));
  }

 protected:
  // Checks bins [L * K, bin_size] (coordinates in [0, dim)).
  absl::Status CheckBins(const char* op, const Tensor& bins, int64_t dim) const {
    TF_RETURN_IF_ERROR(CheckRank(op, "bins", bins, 2));
    const int64_t bin_size = bins.dim_size(1);
    if (bins.dim_size(0) != num_tables_ * num_hashes_ || bin_size < 2 ||
        (bin_size & (bin_size - 1)) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": bins must have shape [num_tables * num_hashes = ", num_tables_ * num_hashes_,
          ", bin_size] with bin_size a power of two >= 2, got ", bins.shape().DebugString()));
    }
    if (num_hashes_ * WtaHashBits(bin_size) > 30) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": num_hashes * log2(bin_size) = ", num_hashes_ * WtaHashBits(bin_size),
          " bits per table; at most 30 are allowed"));
    }
    const auto flat = bins.flat<int32_t>();
    for (int64_t i = 0; i < flat.size(); ++i) {
      if (flat(i) < 0 || flat(i) >= dim) {
        return absl::InvalidArgumentError(absl::StrCat(op, ": bins holds coordinate ", flat(i),
                                                       ", outside the input width [0, ", dim,
                                                       ")"));
      }
    }
    return absl::OkStatus();
  }

  bool densified_;
};

// Both LshWtaHash (a tensor) and ResourceLshWtaHash (a variable, read in place).
class LshWtaHashOp : public WtaHashOpBase {
 public:
  using WtaHashOpBase::WtaHashOpBase;

  void Compute(OpKernelContext* ctx) override {
    const char* kOp = OpName(*this);
    InputTensor input;
    OP_REQUIRES_OK(ctx, input.Init(ctx, kOp, "inputs", WtaHashInput::kInputs));
    const Tensor& inputs = input.tensor();
    const Tensor& bins = ctx->input(WtaHashInput::kBins);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "inputs", inputs, 2));
    OP_REQUIRES_OK(ctx, CheckBins(kOp, bins, inputs.dim_size(1)));
    const LshShape shape = Shape(inputs.dim_size(0), inputs.dim_size(1));
    int32_t* codes = AllocateCodes(ctx, shape.batch);
    if (codes == nullptr) return;
    WtaHashDense(shape, inputs.flat<float>().data(), bins.flat<int32_t>().data(),
                 bins.dim_size(1), densified_, codes, TfParallelFor(ctx));
  }
};

class LshWtaHashSparseOp : public WtaHashOpBase {
 public:
  using WtaHashOpBase::WtaHashOpBase;

  void Compute(OpKernelContext* ctx) override {
    constexpr char kOp[] = "LshWtaHashSparse";
    SparseRows rows;
    OP_REQUIRES_OK(ctx, CheckSparseInputs(kOp, ctx, &rows));
    const Tensor& bins = ctx->input(WtaHashSparseInput::kBins);
    OP_REQUIRES_OK(ctx, CheckBins(kOp, bins, rows.dim));
    const LshShape shape = Shape(rows.batch, rows.dim);
    int32_t* codes = AllocateCodes(ctx, shape.batch);
    if (codes == nullptr) return;
    OP_REQUIRES_OK(ctx, GroupSparseRows(ctx, &rows));
    WtaHashSparse(shape, rows.offsets(), rows.feature_ids.data(), rows.values.data(),
                  bins.flat<int32_t>().data(), bins.dim_size(1), densified_, codes,
                  TfParallelFor(ctx));
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("TfLsh>LshSrpHash").Device(tensorflow::DEVICE_CPU), LshSrpHashOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>LshSrpHashSparse").Device(tensorflow::DEVICE_CPU),
                        LshSrpHashSparseOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>LshWtaHash").Device(tensorflow::DEVICE_CPU), LshWtaHashOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>ResourceLshSrpHash").Device(tensorflow::DEVICE_CPU),
                        LshSrpHashOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>ResourceLshWtaHash").Device(tensorflow::DEVICE_CPU),
                        LshWtaHashOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>LshWtaHashSparse").Device(tensorflow::DEVICE_CPU),
                        LshWtaHashSparseOp);

}  // namespace tf_lsh
