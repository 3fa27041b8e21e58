// Losses over each example's active units, each fused with its gradient.
//
// Softmax cross-entropy (SLIDE's). Per example b, over the units k with ids[b, k] >= 0 (padding -1 is left out of the softmax):
//   is_label[k] = ids[b, k] is one of labels[b, :] (-1 padded); n_b = sum of is_label;
//   loss_b = -sum_k is_label[k] * log_softmax(logits[b, :])[k] / n_b   (0 if n_b == 0).
// The loss is the mean of loss_b over the examples with n_b > 0 (SLIDE's training loss), and
//   grad[b, k] = (softmax[k] - is_label[k] / n_b) / E,   E = examples with n_b > 0,
// 0 for padding and for examples without a label in their set.
//
// Example: one example, active ids {4, 9}, label 9, logits {0, 0}:
//   loss = log 2, grad = {0.5, -0.5}.
//
// Binary cross-entropy (one-vs-rest, as the label trees train). Per example b, with is_label
// and n_b as above, over the units that are not padding:
//   loss_b = sum_k [softplus(logits[b, k]) - is_label[k] * logits[b, k]] / n_b  (0 if n_b == 0),
// the loss is the mean of loss_b over the examples with n_b > 0, and
//   grad[b, k] = (sigmoid(logits[b, k]) - is_label[k]) / (n_b E).
//
// Example: one example, active ids {4, 9}, label 9, logits {0, 0}:
//   loss = 2 log 2, grad = {0.5, -0.5}.
#ifndef TF_LSH_OPS_CC_CORE_ACTIVE_LOSSES_H_
#define TF_LSH_OPS_CC_CORE_ACTIVE_LOSSES_H_

#include <cstdint>

#include "tf_lsh_ops/cc/core/parallel.h"

namespace tf_lsh {

// logits, grad: [batch, active]; ids: [id_rows, active], where id_rows is batch or 1 (one
// active set for the whole batch); labels: [batch, num_labels]. Returns the loss.
// Deterministic for any thread count.
float ActiveSoftmaxCrossEntropy(int64_t batch, int64_t active, int64_t num_labels,
                                int64_t id_rows, const int32_t* ids, const float* logits,
                                const int32_t* labels, float* grad,
                                const ParallelFor& parallel_for);

// The binary cross-entropy, with the arguments of ActiveSoftmaxCrossEntropy.
float ActiveBinaryCrossEntropy(int64_t batch, int64_t active, int64_t num_labels,
                               int64_t id_rows, const int32_t* ids, const float* logits,
                               const int32_t* labels, float* grad,
                               const ParallelFor& parallel_for);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_ACTIVE_LOSSES_H_
