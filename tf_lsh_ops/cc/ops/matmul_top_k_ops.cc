// Op registration of the fused scores-and-top-k (core/matmul_top_k.h).
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_lsh_ops/cc/ops/shape_checks.h"

namespace tf_lsh {

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("TfLsh>MatmulTopK")
    .Input("queries: float")
    .Input("keys: float")
    .Input("biases: float")
    .Output("ids: int32")
    .Attr("k: int >= 1")
    .SetShapeFn([](InferenceContext* c) {
      constexpr char kOp[] = "MatmulTopK";
      ShapeHandle queries, keys, biases;
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 0, "queries", 2, &queries));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 1, "keys", 2, &keys));
      TF_RETURN_IF_ERROR(WithRankNamed(c, kOp, 2, "biases", 1, &biases));
      DimensionHandle unused, units;
      TF_RETURN_IF_ERROR(MergeNamed(c, kOp, queries, 1, "queries", keys, 1, "keys", &unused));
      TF_RETURN_IF_ERROR(MergeNamed(c, kOp, keys, 0, "keys", biases, 0, "biases", &units));
      int64_t k;
      TF_RETURN_IF_ERROR(c->GetAttr("k", &k));
      if (c->ValueKnown(units) && k > c->Value(units)) {
        return absl::InvalidArgumentError(absl::StrCat(
            kOp, ": k = ", k, " must be at most the number of units (dimension 0 of keys, shape ",
            c->DebugString(keys), ")"));
      }
      c->set_output(0, c->Matrix(c->Dim(queries, 0), k));
      return absl::OkStatus();
    })
    .Doc(R"doc(
ids [batch, k]: per row b, the k units u with the largest queries[b] . keys[u] + biases[u],
by decreasing score, ties to the lower id (tf.math.top_k's order); NaN scores rank as -inf.
The [batch, units] scores are never formed.
)doc");

}  // namespace tf_lsh
