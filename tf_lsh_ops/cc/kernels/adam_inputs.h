// Reads Adam's scalar inputs (lr, beta1, beta2, epsilon, beta1_power, beta2_power).
#ifndef TF_LSH_OPS_CC_KERNELS_ADAM_INPUTS_H_
#define TF_LSH_OPS_CC_KERNELS_ADAM_INPUTS_H_

#include <cmath>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/sparse_adam.h"

namespace tf_lsh {

// The Adam ops end with these scalar inputs, in this order, from their input `first` on.
struct AdamScalarInput {
  enum : int { kLr, kBeta1, kBeta2, kEpsilon, kBeta1Power, kBeta2Power, kCount };
};

// Reads the scalars; alpha folds in the bias corrections as Keras does.
inline absl::Status ReadAdamInputs(tensorflow::OpKernelContext* ctx, const char* op, int first,
                                   AdamHyperparameters* hyper) {
  constexpr const char* kNames[AdamScalarInput::kCount] = {
      "lr", "beta1", "beta2", "epsilon", "beta1_power", "beta2_power"};
  float value[AdamScalarInput::kCount];
  for (int i = 0; i < AdamScalarInput::kCount; ++i) {
    const tensorflow::Tensor& t = ctx->input(first + i);
    if (t.NumElements() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": ", kNames[i],
                                                     " must be a scalar, got shape ",
                                                     t.shape().DebugString()));
    }
    value[i] = t.flat<float>()(0);
  }
  const float lr = value[AdamScalarInput::kLr];
  const float beta1_power = value[AdamScalarInput::kBeta1Power];
  const float beta2_power = value[AdamScalarInput::kBeta2Power];
  *hyper = {lr * std::sqrt(1.f - beta2_power) / (1.f - beta1_power),
            value[AdamScalarInput::kBeta1], value[AdamScalarInput::kBeta2],
            value[AdamScalarInput::kEpsilon]};
  return absl::OkStatus();
}

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_KERNELS_ADAM_INPUTS_H_
