// A 64-bit fingerprint of each row of a matrix, to tell which rows changed since a snapshot.
//
// A table refresh re-hashes only the neurons whose weights changed since they were last
// hashed (3%-7% of an Amazon-670K output layer between two refreshes): it compares each row's
// fingerprint with the one stored when the row was hashed. Reading the matrix once costs far
// less than hashing it again, and the comparison holds whatever changed the weights (any
// optimizer, weight decay, set_weights, a checkpoint restore).
//
// The fingerprint hashes the row's bytes (wyhash-style 64 x 64 -> 128-bit multiplies over four
// independent lanes), so a changed row keeps its fingerprint about as rarely as with any good
// 64-bit hash (a chance near 2^-64; a unit missed that way keeps stale codes until it changes
// again). Plain integer code: the same values on every machine and instruction set.
//
// Example:
//   float rows[2 * 3] = {1, 2, 3,  1, 2, 3};
//   uint64_t fingerprints[2];
//   RowFingerprints(rows, 2, 3, fingerprints, SerialFor());  // the two are equal
#ifndef TF_LSH_OPS_CC_CORE_ROW_FINGERPRINTS_H_
#define TF_LSH_OPS_CC_CORE_ROW_FINGERPRINTS_H_

#include <cstdint>

#include "tf_lsh_ops/cc/core/parallel.h"

namespace tf_lsh {

// Fingerprint of one row of `dim` floats.
uint64_t RowFingerprint(const float* row, int64_t dim);

// fingerprints[r] = RowFingerprint(rows + r * dim, dim) for r in [0, num_rows).
void RowFingerprints(const float* rows, int64_t num_rows, int64_t dim, uint64_t* fingerprints,
                     const ParallelFor& parallel_for);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_ROW_FINGERPRINTS_H_
