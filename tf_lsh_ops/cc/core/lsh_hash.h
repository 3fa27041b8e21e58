// Locality-sensitive hash functions: each maps a vector to one bucket id per table.
//
// L tables, each concatenating K hashes. For table l, hash j = l * K + j of H = L * K.
//  - Signed random projections (SimHash): hash j is the sign of <x, projection j>, one bit.
//    Projections are a [dim, H] matrix (feature-major, so sparse inputs read one row per
//    nonzero), Gaussian or sparse +-1.
//    Maximum inner product search (MIPS): data vectors w are mapped to [w / M, sqrt(1 - |w/M|^2)]
//    with M >= the largest norm, queries q to [q, 0]; projections then have dim + 1 rows. After
//    the map, the angle between query and data vector orders neurons by <q, w>.
//  - Winner-take-all (WTA): hash j looks at the bin of `bin_size` coordinates bins[j, :] and
//    returns the position of the largest one (log2(bin_size) bits).
//  - Densified WTA (DWTA): as WTA over the nonzero coordinates only. A bin with no nonzero
//    coordinate borrows the value of another bin along a fixed probe sequence, so sparse
//    vectors still get informative codes.
// The bucket id of table l packs its K hashes, hash 0 in the lowest bits.
//
// Example (SimHash, 1 table of 2 bits, 2-dim input):
//   float projections[4] = {1, -1,   // feature 0
//                           1, 1};   // feature 1
//   float x[2] = {1, 2};  int32_t code;
//   SrpHashDense(LshShape{1, 2, 1, 2}, x, projections, MipsSide::kNone, 0.f, &code,
//                SerialFor());  // <x,p0> = 3 > 0, <x,p1> = 1 > 0: code = 0b11 = 3
#ifndef TF_LSH_OPS_CC_CORE_LSH_HASH_H_
#define TF_LSH_OPS_CC_CORE_LSH_HASH_H_

#include <cstdint>

#include "tf_lsh_ops/cc/core/parallel.h"

namespace tf_lsh {

struct LshShape {
  int64_t batch;       // vectors to hash
  int64_t dim;         // their length
  int64_t num_tables;  // L
  int64_t num_hashes;  // K, hashes per table
  int64_t total_hashes() const { return num_tables * num_hashes; }
};

enum class MipsSide { kNone, kData, kQuery };

// Bits of one WTA hash: log2(bin_size); bin_size must be a power of two >= 2.
int WtaHashBits(int64_t bin_size);

// Fills projections [dim, total_hashes]: Gaussian if density >= 1, else each entry is +-1 with
// probability density and 0 otherwise.
void MakeSrpProjections(int64_t dim, int64_t total_hashes, double density, uint64_t seed,
                        float* projections);

// Fills bins [total_hashes, bin_size] with coordinates in [0, dim): consecutive permutations
// of 0..dim-1 cut into bins, so every coordinate is looked at about equally often.
void MakeWtaBins(int64_t dim, int64_t total_hashes, int64_t bin_size, uint64_t seed,
                 int32_t* bins);

// Dense inputs [batch, dim] -> codes [batch, num_tables]. With MIPS, projections has dim + 1
// rows and `max_norm` is M (data side only).
void SrpHashDense(const LshShape& shape, const float* inputs, const float* projections,
                  MipsSide mips, float max_norm, int32_t* codes, const ParallelFor& parallel_for);

// Sparse inputs in CSR form: row b has values[row_offsets[b] .. row_offsets[b + 1]) at
// features feature_ids[...]; the features must lie in [0, dim).
void SrpHashSparse(const LshShape& shape, const int64_t* row_offsets, const int64_t* feature_ids,
                   const float* values, const float* projections, MipsSide mips, float max_norm,
                   int32_t* codes, const ParallelFor& parallel_for);

void WtaHashDense(const LshShape& shape, const float* inputs, const int32_t* bins,
                  int64_t bin_size, bool densified, int32_t* codes,
                  const ParallelFor& parallel_for);

// Sparse inputs are hashed as the dense vector they stand for (zeros elsewhere).
void WtaHashSparse(const LshShape& shape, const int64_t* row_offsets, const int64_t* feature_ids,
                   const float* values, const int32_t* bins, int64_t bin_size, bool densified,
                   int32_t* codes, const ParallelFor& parallel_for);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_LSH_HASH_H_
