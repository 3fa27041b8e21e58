// Reads an op input that is either a plain tensor or a resource variable.
//
// A variable is read in place under a shared lock, as ResourceGather does: after a sparse
// update TensorFlow puts a variable in copy-on-read mode, where every ReadVariableOp copies
// the whole matrix; reading the handle avoids that copy on every training step. Large
// variables are backed with huge pages (core/huge_pages.h).
#ifndef TF_LSH_OPS_CC_KERNELS_VARIABLE_ACCESS_H_
#define TF_LSH_OPS_CC_KERNELS_VARIABLE_ACCESS_H_

#include <memory>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tf_lsh_ops/cc/core/huge_pages.h"

namespace tf_lsh {

class InputTensor {
 public:
  absl::Status Init(tensorflow::OpKernelContext* ctx, const char* op, const char* name,
                    int index) {
    if (ctx->input_dtype(index) != tensorflow::DT_RESOURCE) {
      tensor_ = &ctx->input(index);
      return absl::OkStatus();
    }
    TF_RETURN_IF_ERROR(
        tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, index), &var_));
    lock_ = std::make_unique<tsl::tf_shared_lock>(*var_->mu());
    if (!var_->is_initialized) {
      return absl::FailedPreconditionError(
          absl::StrCat(op, ": variable ", name, " is not initialized"));
    }
    if (var_->tensor()->dtype() != tensorflow::DT_FLOAT) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": variable ", name, " must be float32, got ",
                       tensorflow::DataTypeString(var_->tensor()->dtype())));
    }
    tensor_ = var_->tensor();
    // Variables live long: worth backing with huge pages (rows are read scattered).
    AdviseHugePages(tensor_->tensor_data().data(), tensor_->TotalBytes());
    return absl::OkStatus();
  }

  const tensorflow::Tensor& tensor() const { return *tensor_; }

 private:
  tensorflow::core::RefCountPtr<tensorflow::Var> var_;
  std::unique_ptr<tsl::tf_shared_lock> lock_;
  const tensorflow::Tensor* tensor_ = nullptr;
};

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_KERNELS_VARIABLE_ACCESS_H_
