// Hash tables of neuron ids, and the queries that pick each example's active neurons.
//
// Format (plain arrays, so they live in tf.Variables and checkpoints):
//   ids    [num_tables, num_buckets, capacity]  neuron ids, -1 where empty;
//   counts [num_tables, num_buckets]            neurons that hashed to the bucket so far; the
//                                               bucket holds the first min(count, capacity)
//                                               slots of ids. Removing a neuron (an update)
//                                               resets it to the number stored, minus one:
//                                               neurons dropped on overflow are forgotten.
// A full bucket keeps `capacity` of its neurons: FIFO overwrites the oldest slot (a ring
// buffer), reservoir sampling keeps a uniform sample (seeded, per table).
//
// Example: 1 table, 2 buckets of capacity 2; neurons 0, 1, 2 hash to buckets 1, 1, 0.
//   int32_t codes[3] = {1, 1, 0}, ids[4], counts[2];
//   BuildTables({1, 2, 2}, 3, codes, Overflow::kFifo, 0, ids, counts, SerialFor());
//   // ids = {2, -1,  0, 1}, counts = {1, 2}
#ifndef TF_LSH_OPS_CC_CORE_LSH_TABLES_H_
#define TF_LSH_OPS_CC_CORE_LSH_TABLES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "tf_lsh_ops/cc/core/parallel.h"

namespace tf_lsh {

struct TableShape {
  int64_t num_tables;
  int64_t num_buckets;
  int64_t capacity;
};

enum class Overflow { kFifo, kReservoir };

// codes [num_neurons, num_tables], each in [0, num_buckets) (see FindInvalidCode).
void BuildTables(const TableShape& shape, int64_t num_neurons, const int32_t* codes,
                 Overflow overflow, uint64_t seed, int32_t* ids, int32_t* counts,
                 const ParallelFor& parallel_for);

// Moves `num_updates` neurons from their old buckets to their new ones, in place. A neuron
// absent from its old bucket (dropped on overflow) is inserted only if its bucket changed.
// neuron_ids must be distinct; old_codes and new_codes are [num_updates, num_tables].
void UpdateTables(const TableShape& shape, int64_t num_updates, const int32_t* neuron_ids,
                  const int32_t* old_codes, const int32_t* new_codes, Overflow overflow,
                  uint64_t seed, int32_t* ids, int32_t* counts, const ParallelFor& parallel_for);

// Returns the flat position of the first code outside [0, num_buckets), or -1.
int64_t FindInvalidCode(const int32_t* codes, int64_t count, int64_t num_buckets);

enum class QueryRule {
  kFrequency,  // the k ids found in most tables (the paper); ties: first found
  kUnion,      // the ids of all buckets in table order, up to k (SLIDE)
  kThreshold,  // ids found in at least `min_count` tables, most frequent first
};

struct QueryOptions {
  int64_t k;            // ids per example (or per batch)
  int64_t num_neurons;  // ids lie in [0, num_neurons)
  QueryRule rule = QueryRule::kFrequency;
  int64_t min_count = 1;     // for kThreshold
  bool fill_random = false;  // fill up to k with random distinct ids; else pad with -1
  bool batch_wide = false;   // one set for the whole batch (as Mongoose), output [1, k]
  uint64_t seed = 0;         // for the random fill
};

// What a batch-wide query counts with: a count per neuron, all zero between queries, and lists
// reused from query to query. An op kernel keeps one, so that a query costs O(slots scanned),
// never O(num_neurons) (only the first query of a layer allocates the counts).
struct BatchQueryScratch {
  struct FoundId {
    int32_t id;
    int32_t count;     // tables whose buckets hold it
    int32_t position;  // of the first slot it was found in, in scan order
  };
  std::vector<uint16_t> neuron_counts;
  std::vector<uint64_t> routed;                // slots (position, id), by scan run and id range
  std::vector<std::vector<FoundId>> pools;     // per id range: candidates in the order found
  std::vector<std::vector<FoundId>> selected;  // per id range: the best, by count descending
};

// codes [batch, num_tables] -> active [batch, k] (or [1, k] if batch_wide). `labels`
// [batch, num_labels] (-1 padded, may be null if num_labels == 0) are placed first, once each.
// A batch-wide query uses `scratch` if given (else its own); large ones run on several threads
// and give the same set. Returns "" or an error message (too many labels for k, or more than
// 2^31 - 1 slots to scan).
std::string QueryTables(const TableShape& shape, int64_t batch, const int32_t* codes,
                        const int32_t* ids, const int32_t* counts, const int32_t* labels,
                        int64_t num_labels, const QueryOptions& options, int32_t* active,
                        const ParallelFor& parallel_for, BatchQueryScratch* scratch = nullptr);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_LSH_TABLES_H_
