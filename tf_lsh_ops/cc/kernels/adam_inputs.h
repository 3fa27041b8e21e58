// Reads Adam's scalar inputs (lr, beta1, beta2, epsilon, beta1_power, beta2_power).
#ifndef TF_LSH_OPS_CC_KERNELS_ADAM_INPUTS_H_
#define TF_LSH_OPS_CC_KERNELS_ADAM_INPUTS_H_

#include <cmath>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/sparse_adam.h"

namespace tf_lsh {

// The six scalars start at input `first`; alpha folds in the bias corrections as Keras does.
inline absl::Status ReadAdamInputs(tensorflow::OpKernelContext* ctx, const char* op, int first,
                                   AdamHyperparameters* hyper) {
  float value[6];
  for (int i = 0; i < 6; ++i) {
    const tensorflow::Tensor& t = ctx->input(first + i);
    if (t.NumElements() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": hyperparameter input ", first + i, " must be a scalar, got shape ",
                       t.shape().DebugString()));
    }
    value[i] = t.flat<float>()(0);
  }
  const float lr = value[0], beta1_power = value[4], beta2_power = value[5];
  *hyper = {lr * std::sqrt(1.f - beta2_power) / (1.f - beta1_power), value[1], value[2],
            value[3]};
  return absl::OkStatus();
}

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_KERNELS_ADAM_INPUTS_H_
