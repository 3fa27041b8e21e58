// Kernel-side input checks whose errors name the op, the argument and the shapes.
#ifndef TF_LSH_OPS_CC_KERNELS_INPUT_CHECKS_H_
#define TF_LSH_OPS_CC_KERNELS_INPUT_CHECKS_H_

#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_lsh {

// The namespace of every tf-lsh op type (REGISTER_OP("TfLsh>LshQuery")).
constexpr char kOpNamespace[] = "TfLsh>";

// The op's name in error messages, its type without the namespace ("LshQuery: ..."), for
// kernels that serve several ops. A suffix of the kernel's type_string(): NUL-terminated, and
// valid as long as the kernel.
inline const char* OpName(const tensorflow::OpKernel& kernel) {
  return absl::StripPrefix(kernel.type_string(), kOpNamespace).data();
}

inline absl::Status CheckRank(const char* op, const char* name, const tensorflow::Tensor& t,
                              int rank) {
  if (t.dims() != rank) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must have rank ", rank,
                                                   ", got shape ", t.shape().DebugString()));
  }
  return absl::OkStatus();
}

// Dimension `ia` of `a` must equal dimension `ib` of `b`.
inline absl::Status CheckSameDim(const char* op, const char* name_a, const tensorflow::Tensor& a,
                                 int ia, const char* name_b, const tensorflow::Tensor& b,
                                 int ib) {
  if (a.dim_size(ia) != b.dim_size(ib)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": dimension ", ia, " of ", name_a, " (shape ", a.shape().DebugString(),
                     ") must equal dimension ", ib, " of ", name_b, " (shape ",
                     b.shape().DebugString(), ")"));
  }
  return absl::OkStatus();
}

// A scalar input such as a seed (Tensor::scalar would CHECK-fail, killing the process).
template <typename T>
absl::Status ReadScalar(const char* op, const char* name, const tensorflow::Tensor& t,
                        T* value) {
  if (t.dims() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must be a scalar, got shape ",
                                                   t.shape().DebugString()));
  }
  *value = t.scalar<T>()();
  return absl::OkStatus();
}

// Allocates output `index` of a shape computed from attrs or input values; a shape whose size
// overflows int64 is an InvalidArgument error (TensorShape's constructor would CHECK-fail).
inline absl::Status AllocateOutput(tensorflow::OpKernelContext* ctx, const char* op, int index,
                                   std::initializer_list<int64_t> dims,
                                   tensorflow::Tensor** out) {
  tensorflow::TensorShape shape;
  if (!tensorflow::TensorShape::BuildTensorShape(dims, &shape).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": output ", index, " of shape [",
                                                   absl::StrJoin(dims, ", "),
                                                   "] is too large"));
  }
  return ctx->allocate_output(index, shape, out);
}

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_KERNELS_INPUT_CHECKS_H_
