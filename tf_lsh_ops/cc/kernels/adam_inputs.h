// Reads the scalar inputs of the Adam ops (lr, beta1, beta2, epsilon, beta1_power,
// beta2_power), of the rowwise RMSprop ops and of the Adam ops without a first moment (lr,
// beta2, epsilon, beta2_power), and checks a rowwise moment's shape.
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

// Reads `count` float scalars, named `names`, from input `first` on into `values`.
inline absl::Status ReadFloatScalars(tensorflow::OpKernelContext* ctx, const char* op, int first,
                                     const char* const* names, int count, float* values) {
  for (int i = 0; i < count; ++i) {
    const tensorflow::Tensor& t = ctx->input(first + i);
    if (t.NumElements() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": ", names[i],
                                                     " must be a scalar, got shape ",
                                                     t.shape().DebugString()));
    }
    values[i] = t.flat<float>()(0);
  }
  return absl::OkStatus();
}

// Reads the scalars; alpha folds in the bias corrections as Keras does.
inline absl::Status ReadAdamInputs(tensorflow::OpKernelContext* ctx, const char* op, int first,
                                   AdamHyperparameters* hyper) {
  constexpr const char* kNames[AdamScalarInput::kCount] = {
      "lr", "beta1", "beta2", "epsilon", "beta1_power", "beta2_power"};
  float value[AdamScalarInput::kCount];
  TF_RETURN_IF_ERROR(ReadFloatScalars(ctx, op, first, kNames, AdamScalarInput::kCount, value));
  const float lr = value[AdamScalarInput::kLr];
  const float beta1_power = value[AdamScalarInput::kBeta1Power];
  const float beta2_power = value[AdamScalarInput::kBeta2Power];
  *hyper = {lr * std::sqrt(1.f - beta2_power) / (1.f - beta1_power),
            value[AdamScalarInput::kBeta1], value[AdamScalarInput::kBeta2],
            value[AdamScalarInput::kEpsilon]};
  return absl::OkStatus();
}

// The rowwise RMSprop ops end with lr, beta2, epsilon, beta2_power, from their input `first` on;
// alpha folds in the bias correction.
inline absl::Status ReadRowwiseRmspropInputs(tensorflow::OpKernelContext* ctx, const char* op,
                                             int first, RowwiseRmspropHyperparameters* hyper) {
  constexpr const char* kNames[4] = {"lr", "beta2", "epsilon", "beta2_power"};
  float value[4];
  TF_RETURN_IF_ERROR(ReadFloatScalars(ctx, op, first, kNames, 4, value));
  *hyper = {value[0] * std::sqrt(1.f - value[3]), value[1], value[2]};
  return absl::OkStatus();
}

// The Adam ops without a first moment (beta1 = 0) end with the rowwise RMSprop ops' scalars.
inline absl::Status ReadAdamNoMomentumInputs(tensorflow::OpKernelContext* ctx, const char* op,
                                             int first, AdamHyperparameters* hyper) {
  RowwiseRmspropHyperparameters rmsprop;
  TF_RETURN_IF_ERROR(ReadRowwiseRmspropInputs(ctx, op, first, &rmsprop));
  *hyper = {rmsprop.alpha, /*beta1=*/0.f, rmsprop.beta2, rmsprop.epsilon};
  return absl::OkStatus();
}

// A rowwise second moment `v` (named `v_name`) must hold one value per row of `var` (rank >= 1):
// shape [rows] or [rows, 1].
inline absl::Status CheckRowwiseMoment(const char* op, const char* v_name,
                                       const tensorflow::Tensor& v, const char* var_name,
                                       const tensorflow::Tensor& var) {
  if (var.dims() < 1) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", var_name,
                                                   " must have rank >= 1, got shape ",
                                                   var.shape().DebugString()));
  }
  const bool one_per_row = (v.dims() == 1 || (v.dims() == 2 && v.dim_size(1) == 1)) &&
                           v.dim_size(0) == var.dim_size(0);
  if (!one_per_row) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", v_name, " has shape ", v.shape().DebugString(),
        "; it must hold one value per row of ", var_name, " (shape [", var.dim_size(0), "] or [",
        var.dim_size(0), ", 1]), ", var_name, " has shape ", var.shape().DebugString()));
  }
  return absl::OkStatus();
}

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_KERNELS_ADAM_INPUTS_H_
