// The k best units of each query by inner product plus bias, without the [batch, units] scores.
//
// For each row b of `queries`, the ids u in [0, units) of the k largest
//   score(b, u) = (queries[b, :] . keys[u, :]) + biases[u],
// by decreasing score, ties by increasing id: what tf.math.top_k returns on the same scores.
// A NaN score ranks as -inf (below every number; among NaN and -inf, lower ids first).
//
// Units are scored a chunk at a time (up to 256 keys, read in place, times a block of 16 rows
// with the register-blocked MatMul, or of 8 with a kernel of the same arithmetic) and each row
// keeps only the candidates that beat its current k-th best score, so memory is O(batch * k)
// and the scores pass through L1 only. Every score is computed with the same arithmetic (one
// product per depth step, in order, then the bias), so the result does not depend on how the
// work is split, nor on the other rows of the batch.
//
// Example: queries {{1, 0}}, keys {{0, 1}, {2, 0}, {1, 0}}, biases {0, 0, 1}, k = 2: the scores
// are {0, 2, 2}, so ids = {1, 2} (the tie goes to the lower id).
#ifndef TF_LSH_OPS_CC_CORE_MATMUL_TOP_K_H_
#define TF_LSH_OPS_CC_CORE_MATMUL_TOP_K_H_

#include <cstdint>

#include "tf_lsh_ops/cc/core/parallel.h"

namespace tf_lsh {

// How MatmulTopK splits the work. The defaults suit the op; tests shrink them to reach every
// path (several unit shards merged, chunks that split the first k units) on small inputs.
struct MatmulTopKSplit {
  // Units scored per MatMul; 0 picks about 32 KB of keys (at most 256 units).
  int64_t chunk_units = 0;
  // The units are split into shards (merged per row at the end) only when the blocks of 16 rows
  // are fewer than target_tasks, and only if each shard gets at least max(min_shard_units, 4 * k)
  // units: splitting is for parallelism when rows are few.
  int64_t min_shard_units = 4096;
  // About this many (row group, unit shard) tasks are made, so that a thread pool of up to this
  // many threads is kept busy both at batch 1 and at batch 128 (the op passes its pool's size:
  // every shard more restarts the selection of its rows).
  int64_t target_tasks = 8;
};

// queries: [batch, dim]; keys: [units, dim] (row u is unit u's vector); biases: [units];
// ids: [batch, k] output. Needs 1 <= k <= units <= 2^31 - 1. Deterministic for any sharding.
void MatmulTopK(int64_t batch, int64_t dim, int64_t units, int64_t k, const float* queries,
                const float* keys, const float* biases, int32_t* ids,
                const ParallelFor& parallel_for, const MatmulTopKSplit& split = {});

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_MATMUL_TOP_K_H_
