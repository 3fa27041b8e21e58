// Shape-function checks whose errors name the op, the argument and the shapes.
#ifndef TF_LSH_OPS_CC_OPS_SHAPE_CHECKS_H_
#define TF_LSH_OPS_CC_OPS_SHAPE_CHECKS_H_

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lsh {

inline absl::Status WithRankNamed(tensorflow::shape_inference::InferenceContext* c,
                                  const char* op, int input, const char* name, int rank,
                                  tensorflow::shape_inference::ShapeHandle* out) {
  if (!c->WithRank(c->input(input), rank, out).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must have rank ", rank,
                                                   ", got shape ",
                                                   c->DebugString(c->input(input))));
  }
  return absl::OkStatus();
}

// Merges dimension `ia` of `a` with dimension `ib` of `b`; on a mismatch, names both.
inline absl::Status MergeNamed(tensorflow::shape_inference::InferenceContext* c, const char* op,
                               tensorflow::shape_inference::ShapeHandle a, int ia,
                               const char* name_a, tensorflow::shape_inference::ShapeHandle b,
                               int ib, const char* name_b,
                               tensorflow::shape_inference::DimensionHandle* out) {
  if (!c->Merge(c->Dim(a, ia), c->Dim(b, ib), out).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": dimension ", ia, " of ", name_a, " (shape ", c->DebugString(a),
        ") must equal dimension ", ib, " of ", name_b, " (shape ", c->DebugString(b), ")"));
  }
  return absl::OkStatus();
}

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_OPS_SHAPE_CHECKS_H_
