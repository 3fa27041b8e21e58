// Lazy ("sparse") Adam: updates the moments and weights of the touched rows only.
//
// For each distinct row r of `indices` (duplicate rows have their gradients summed first):
//   m[r] += (g - m[r]) * (1 - beta1)
//   v[r] += (g * g - v[r]) * (1 - beta2)
//   var[r] -= alpha * m[r] / (sqrt(v[r]) + epsilon),  alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
// as Keras' Adam does for every row. Rows not in `indices` are not touched at all, so their
// moments do not decay: the usual lazy-Adam trade-off (TensorFlow Addons' LazyAdam).
// Each row is written by one thread; the result does not depend on the thread count.
#ifndef TF_LSH_OPS_CC_CORE_SPARSE_ADAM_H_
#define TF_LSH_OPS_CC_CORE_SPARSE_ADAM_H_

#include <cstdint>

#include "tf_lsh_ops/cc/core/parallel.h"
#include "tf_lsh_ops/cc/core/vector_kernels.h"

namespace tf_lsh {

struct AdamHyperparameters {
  float alpha;  // lr * sqrt(1 - beta2^t) / (1 - beta1^t)
  float beta1;
  float beta2;
  float epsilon;
};

// A variable and its two Adam moments, of one shape. `m` is null when beta1 = 0: the first
// moment would be the gradient itself, so it is not kept (half the state, a third less traffic).
struct AdamState {
  float* var;
  float* m;
  float* v;
};

// Row `offset` of a moment that may not be kept (null).
inline float* MomentAt(float* moment, int64_t offset) {
  return moment == nullptr ? nullptr : moment + offset;
}

// Rows are scattered over a variable and its moments (hundreds of MB): loops over rows
// prefetch the row this many ahead in all three, as the out-of-order window covers far less
// than the latency of three misses per row.
constexpr int64_t kAdamRowsAhead = 4;

__attribute__((always_inline)) inline void PrefetchAdamRow(const AdamState& state, int64_t row,
                                                           int64_t dim) {
  PrefetchRowForWrite(state.var + row * dim, dim);
  if (state.m != nullptr) PrefetchRowForWrite(state.m + row * dim, dim);
  PrefetchRowForWrite(state.v + row * dim, dim);
}

// var, m, v: [num_rows, dim] (m may be null, see AdamState); indices [count], each in
// [0, num_rows); grad [count, dim].
void SparseAdamApply(const AdamHyperparameters& hyper, int64_t dim, const int32_t* indices,
                     const float* grad, int64_t count, float* var, float* m, float* v,
                     const ParallelFor& parallel_for);

// Lazy rowwise RMSprop, for rows that stand for input features (a SparseInputDense kernel's,
// like an embedding table's): one second moment per row and no first moment, the state
// FBGEMM's rowwise optimizers keep for embedding tables. A third of lazy Adam's memory
// traffic, and a row's state is its weights alone. For each distinct row r of `indices`
// (duplicate rows summed first):
//   v[r] += (mean(g * g) - v[r]) * (1 - beta2)
//   var[r] -= alpha * g / (sqrt(v[r]) + epsilon),  alpha = lr * sqrt(1 - beta2^t)
// which is Adam with beta1 = 0 and the row's squared gradients averaged.
struct RowwiseRmspropHyperparameters {
  float alpha;  // lr * sqrt(1 - beta2^t)
  float beta2;
  float epsilon;
};

// The update of one row whose summed gradient is g; `v` is the row's second moment.
void RowwiseRmspropRow(const RowwiseRmspropHyperparameters& hyper, int64_t dim, const float* g,
                       float* w, float* v);

// var: [num_rows, dim]; v: [num_rows]; indices [count], each in [0, num_rows); grad
// [count, dim].
void SparseRowwiseRmspropApply(const RowwiseRmspropHyperparameters& hyper, int64_t dim,
                               const int32_t* indices, const float* grad, int64_t count,
                               float* var, float* v, const ParallelFor& parallel_for);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_SPARSE_ADAM_H_
