// Kernel of MultiLabelBatch: checks the rows asked for, calls the core.
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/multi_label_batch.h"
#include "tf_lsh_ops/cc/kernels/input_checks.h"

namespace tf_lsh {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

namespace {

// Input indices, in the order of the op's registration.
struct MultiLabelBatchInput {
  enum : int {
    kFeatureSplits,
    kFeatureIds,
    kFeatureValues,
    kLabelSplits,
    kLabelIds,
    kRows,
    kCount
  };
};

}  // namespace

class MultiLabelBatchOp : public OpKernel {
 public:
  explicit MultiLabelBatchOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_features", &num_features_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_labels", &max_labels_));
  }

  void Compute(OpKernelContext* ctx) override {
    constexpr char kOp[] = "MultiLabelBatch";
    const char* names[MultiLabelBatchInput::kCount] = {
        "feature_splits", "feature_ids", "feature_values", "label_splits", "label_ids", "rows"};
    for (int i = 0; i < MultiLabelBatchInput::kCount; ++i) {
      OP_REQUIRES_OK(ctx, CheckRank(kOp, names[i], ctx->input(i), 1));
    }
    const Tensor& feature_splits = ctx->input(MultiLabelBatchInput::kFeatureSplits);
    const Tensor& feature_ids = ctx->input(MultiLabelBatchInput::kFeatureIds);
    const Tensor& feature_values = ctx->input(MultiLabelBatchInput::kFeatureValues);
    const Tensor& label_splits = ctx->input(MultiLabelBatchInput::kLabelSplits);
    const Tensor& label_ids = ctx->input(MultiLabelBatchInput::kLabelIds);
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "feature_ids", feature_ids, 0, "feature_values",
                                     feature_values, 0));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "feature_splits", feature_splits, 0, "label_splits",
                                     label_splits, 0));
    OP_REQUIRES(ctx, feature_splits.dim_size(0) >= 1,
                absl::InvalidArgumentError(absl::StrCat(
                    kOp, ": feature_splits must hold num_examples + 1 >= 1 offsets, got shape ",
                    feature_splits.shape().DebugString())));
    const MultiLabelArrays data{feature_splits.flat<int64_t>().data(),
                                feature_ids.flat<int64_t>().data(),
                                feature_values.flat<float>().data(),
                                label_splits.flat<int64_t>().data(),
                                label_ids.flat<int32_t>().data(),
                                feature_splits.dim_size(0) - 1,
                                feature_ids.dim_size(0),
                                label_ids.dim_size(0)};
    const Tensor& rows = ctx->input(MultiLabelBatchInput::kRows);
    const int64_t num_rows = rows.dim_size(0);
    int64_t num_entries = 0;
    const std::string error = CheckMultiLabelBatch(data, rows.flat<int64_t>().data(), num_rows,
                                                   num_features_, max_labels_, &num_entries);
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError(absl::StrCat(kOp, ": ", error)));
    Tensor *indices = nullptr, *values = nullptr, *dense_shape = nullptr, *labels = nullptr;
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, kOp, 0, {num_entries, 2}, &indices));
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, kOp, 1, {num_entries}, &values));
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, kOp, 2, {2}, &dense_shape));
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, kOp, 3, {num_rows, max_labels_}, &labels));
    dense_shape->flat<int64_t>()(0) = num_rows;
    dense_shape->flat<int64_t>()(1) = num_features_;
    GatherMultiLabelBatch(data, rows.flat<int64_t>().data(), num_rows, max_labels_,
                          indices->flat<int64_t>().data(), values->flat<float>().data(),
                          labels->flat<int32_t>().data());
  }

 private:
  int64_t num_features_ = 0;
  int64_t max_labels_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("TfLsh>MultiLabelBatch").Device(tensorflow::DEVICE_CPU),
                        MultiLabelBatchOp);

}  // namespace tf_lsh
