// Reads an op input that is either a plain tensor or a resource variable.
//
// A variable is read in place under a shared lock, as ResourceGather does: after a sparse
// update TensorFlow puts a variable in copy-on-read mode, where every ReadVariableOp copies
// the whole matrix; reading the handle avoids that copy on every training step. Ops whose
// calls touch many pages of a large variable ask for huge pages (core/huge_pages.h).
#ifndef TF_LSH_OPS_CC_KERNELS_VARIABLE_ACCESS_H_
#define TF_LSH_OPS_CC_KERNELS_VARIABLE_ACCESS_H_

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tf_lsh_ops/cc/core/huge_pages.h"

namespace tf_lsh {

// Asks for huge pages for `t` if `rows_touched` reads of its rows (its first dimension) touch
// enough of its pages (core/huge_pages.h).
inline void AdviseRows(const tensorflow::Tensor& t, int64_t rows_touched) {
  const int64_t rows = t.dims() > 0 ? t.dim_size(0) : 0;
  if (rows == 0) return;
  AdviseHugePages(t.tensor_data().data(), t.TotalBytes(),
                  PagesTouched(rows_touched, t.TotalBytes() / rows));
}

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
    return absl::OkStatus();
  }

  const tensorflow::Tensor& tensor() const { return *tensor_; }

  // Backs a variable with huge pages if `rows_touched` reads of its rows (scattered) touch
  // enough of its pages; a plain tensor is short-lived and left alone.
  void AdviseHugePagesFor(int64_t rows_touched) const {
    if (var_ != nullptr) AdviseRows(*tensor_, rows_touched);
  }

 private:
  tensorflow::core::RefCountPtr<tensorflow::Var> var_;
  std::unique_ptr<tsl::tf_shared_lock> lock_;
  const tensorflow::Tensor* tensor_ = nullptr;
};

// Float32 resource variables held for an in-place update: exclusively locked (in address
// order, so that concurrent updates cannot deadlock), each with a buffer of its own (a reader
// such as a ReadVariableOp snapshot may still hold the old one: it gets a copy first, as
// TensorFlow's own apply ops do, unless reads already copy), and large ones on huge pages.
class UpdatableVariables {
 public:
  // `inputs`: (name for errors, input index) of each variable.
  absl::Status Init(tensorflow::OpKernelContext* ctx, const char* op,
                    const std::vector<std::pair<const char*, int>>& inputs) {
    vars_.resize(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      TF_RETURN_IF_ERROR(tensorflow::LookupResource(
          ctx, tensorflow::HandleFromInput(ctx, inputs[i].second), &vars_[i]));
    }
    std::vector<tsl::mutex*> mutexes;
    for (auto& var : vars_) mutexes.push_back(var->mu());
    std::sort(mutexes.begin(), mutexes.end());
    mutexes.erase(std::unique(mutexes.begin(), mutexes.end()), mutexes.end());
    for (tsl::mutex* mu : mutexes) locks_.push_back(std::make_unique<tsl::mutex_lock>(*mu));
    for (size_t i = 0; i < inputs.size(); ++i) {
      const tensorflow::Tensor& t = *vars_[i]->tensor();
      if (!vars_[i]->is_initialized || t.dtype() != tensorflow::DT_FLOAT) {
        return absl::InvalidArgumentError(absl::StrCat(
            op, ": ", inputs[i].first, " must be an initialized float32 variable"));
      }
    }
    for (auto& var : vars_) TF_RETURN_IF_ERROR(PrepareForUpdate(ctx, var.get()));
    return absl::OkStatus();
  }

  // Backs the variables with huge pages if `rows_touched` row updates (scattered) touch
  // enough of their pages.
  void AdviseHugePagesFor(int64_t rows_touched) {
    for (auto& var : vars_) AdviseRows(*var->tensor(), rows_touched);
  }

  tensorflow::Tensor* tensor(int i) { return vars_[i]->tensor(); }
  float* data(int i) { return tensor(i)->flat<float>().data(); }

  // Variable `i` (an Adam moment, `name`) must have the shape of variable `owner`
  // (`owner_name`).
  absl::Status CheckSameShape(const char* op, int i, const char* name, int owner,
                              const char* owner_name) {
    const tensorflow::TensorShape& shape = tensor(owner)->shape();
    if (tensor(i)->shape() == shape) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " has shape ",
                                                   tensor(i)->shape().DebugString(),
                                                   "; it must match ", owner_name, ", ",
                                                   shape.DebugString()));
  }

 private:
  static absl::Status PrepareForUpdate(tensorflow::OpKernelContext* ctx, tensorflow::Var* var) {
    tensorflow::Tensor* tensor = var->tensor();
    if (tensor->RefCountIsOne() || var->copy_on_read_mode.load()) return absl::OkStatus();
    tensorflow::Tensor copy;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(tensor->dtype(), tensor->shape(), &copy));
    std::memcpy(copy.flat<float>().data(), tensor->flat<float>().data(),
                tensor->NumElements() * sizeof(float));
    *tensor = copy;
    return absl::OkStatus();
  }

  std::vector<tensorflow::core::RefCountPtr<tensorflow::Var>> vars_;
  std::vector<std::unique_ptr<tsl::mutex_lock>> locks_;
};

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_KERNELS_VARIABLE_ACCESS_H_
