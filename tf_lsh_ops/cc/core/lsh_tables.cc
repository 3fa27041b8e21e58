#include "tf_lsh_ops/cc/core/lsh_tables.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <utility>
#include <vector>

#include "tf_lsh_ops/cc/core/id_map.h"
#include "tf_lsh_ops/cc/core/random.h"

namespace tf_lsh {
namespace {

// Adds `neuron` to the bucket `slots` / `count`, applying the overflow policy when full.
void Insert(int64_t capacity, Overflow overflow, Random* random, int32_t neuron, int32_t* slots,
            int32_t* count) {
  const int64_t seen = *count;
  if (seen < capacity) {
    slots[seen] = neuron;
  } else if (overflow == Overflow::kFifo) {
    slots[seen % capacity] = neuron;
  } else {
    const uint64_t j = random->Uniform(seen + 1);
    if (j < static_cast<uint64_t>(capacity)) slots[j] = neuron;
  }
  // Saturates rather than wrapping to a negative count.
  if (seen < std::numeric_limits<int32_t>::max()) *count = static_cast<int32_t>(seen + 1);
}

// Removes `neuron` from the bucket if it is stored there; returns whether it was.
bool Remove(int64_t capacity, int32_t neuron, int32_t* slots, int32_t* count) {
  const int64_t stored = std::min<int64_t>(*count, capacity);
  for (int64_t p = 0; p < stored; ++p) {
    if (slots[p] != neuron) continue;
    slots[p] = slots[stored - 1];
    slots[stored - 1] = -1;
    *count = static_cast<int32_t>(stored - 1);
    return true;
  }
  return false;
}

struct Candidate {
  int32_t id;
  int32_t count;  // tables whose bucket holds the id
  bool chosen;
};

// Picks the `take` candidates of a pool with the highest counts, highest first, ties in pool
// order: a stable counting sort by count, descending, that writes only the candidates that make
// the cut. Count() each candidate while building the pool, then Take().
class TopByCount {
 public:
  void Clear() { histogram_.clear(); }
  void Count(int32_t count) {
    if (count >= static_cast<int64_t>(histogram_.size())) histogram_.resize(count + 1, 0);
    ++histogram_[count];
  }

  // Positions in the pool of the best `take` (at most the pool size), best first.
  template <typename CountOf>
  void Take(int64_t pool_size, const CountOf& count_of, int64_t take,
            std::vector<int32_t>* picked) {
    picked->resize(take);
    if (take == 0) return;
    // Each count's first output slot, from the highest count down until `take` candidates
    // are covered; `cut` is the lowest count that gets a slot.
    int64_t before = 0;
    int32_t cut = static_cast<int32_t>(histogram_.size()) - 1;
    for (;; --cut) {
      const int64_t n = histogram_[cut];
      histogram_[cut] = before;
      before += n;
      if (before >= take) break;
    }
    for (int64_t i = 0; i < pool_size; ++i) {
      const int32_t count = count_of(i);
      if (count < cut) continue;
      const int64_t at = histogram_[count]++;
      if (at < take) (*picked)[at] = static_cast<int32_t>(i);
    }
  }

 private:
  std::vector<int64_t> histogram_;
};

// Picks the active set of one example (or of a whole batch) into `active[0 .. k)`.
class ActiveSetSelector {
 public:
  ActiveSetSelector(const TableShape& shape, const int32_t* ids, const int32_t* counts,
                    const QueryOptions& options, int64_t max_candidates)
      : shape_(shape), ids_(ids), counts_(counts), options_(options), slot_of_(max_candidates) {}

  // Rows [row_begin, row_end) of codes and labels feed one active set.
  void Select(int64_t row_begin, int64_t row_end, const int32_t* codes, const int32_t* labels,
              int64_t num_labels, uint64_t stream, int32_t* active) {
    slot_of_.Clear();
    candidates_.clear();
    int64_t size = 0;
    for (int64_t r = row_begin; r < row_end; ++r) {
      for (int64_t m = 0; m < num_labels; ++m) {
        const int32_t label = labels[r * num_labels + m];
        if (label >= 0 && Add(label, /*chosen=*/true)) active[size++] = label;
      }
    }
    for (int64_t r = row_begin; r < row_end; ++r) {
      for (int64_t l = 0; l < shape_.num_tables; ++l) {
        const int64_t bucket = l * shape_.num_buckets + codes[r * shape_.num_tables + l];
        const int32_t* slots = ids_ + bucket * shape_.capacity;
        const int64_t stored = std::min<int64_t>(counts_[bucket], shape_.capacity);
        for (int64_t s = 0; s < stored; ++s) {
          if (slots[s] < 0 || slots[s] >= options_.num_neurons) {
            bad_table_id_ = slots[s];  // tables are user-assignable variables
            continue;
          }
          AddOrCount(slots[s]);
        }
      }
    }

    pool_.clear();
    top_.Clear();
    for (int32_t c = 0; c < static_cast<int32_t>(candidates_.size()); ++c) {
      const Candidate& candidate = candidates_[c];
      if (candidate.chosen) continue;
      if (options_.rule == QueryRule::kThreshold && candidate.count < options_.min_count) continue;
      pool_.push_back(c);
      top_.Count(candidate.count);
    }
    const int64_t take = std::min<int64_t>(options_.k - size, pool_.size());
    if (options_.rule != QueryRule::kUnion) {
      // Most tables first; ties go to the id found first (pool_ is in order found).
      top_.Take(
          pool_.size(), [this](int64_t i) { return candidates_[pool_[i]].count; }, take,
          &picked_);
      for (int64_t i = 0; i < take; ++i) picked_[i] = pool_[picked_[i]];
      pool_.swap(picked_);
    }
    for (int64_t i = 0; i < take; ++i) {
      candidates_[pool_[i]].chosen = true;
      active[size++] = candidates_[pool_[i]].id;
    }

    if (options_.fill_random) {
      Random random(options_.seed, stream);
      while (size < options_.k) {
        const int32_t id = static_cast<int32_t>(random.Uniform(options_.num_neurons));
        if (Add(id, /*chosen=*/true)) {
          active[size++] = id;
        } else if (Candidate& c = candidates_[*slot_of_.Find(id)]; !c.chosen) {
          c.chosen = true;
          active[size++] = id;
        }
      }
    }
    std::fill(active + size, active + options_.k, -1);
  }

  // An id outside [0, num_neurons) met in a bucket, or 0 if none.
  int32_t bad_table_id() const { return bad_table_id_; }

 private:
  // Adds `id` as a candidate found in one table, or counts one more table for it: one probe.
  void AddOrCount(int32_t id) {
    const int32_t slot = static_cast<int32_t>(candidates_.size());
    const int32_t found = slot_of_.FindOrInsert(id, slot);
    if (found == slot) {
      candidates_.push_back({id, 1, false});
    } else {
      ++candidates_[found].count;
    }
  }

  // Returns true if `id` is new.
  bool Add(int32_t id, bool chosen) {
    const int32_t slot = static_cast<int32_t>(candidates_.size());
    if (slot_of_.FindOrInsert(id, slot) != slot) return false;
    candidates_.push_back({id, 1, chosen});
    return true;
  }

  const TableShape shape_;
  const int32_t* ids_;
  const int32_t* counts_;
  const QueryOptions options_;
  IdMap slot_of_;
  std::vector<Candidate> candidates_;
  std::vector<int32_t> pool_;    // candidates that may be picked, as indices into candidates_
  std::vector<int32_t> picked_;
  TopByCount top_;
  int32_t bad_table_id_ = 0;
};

std::string BadTableIdError(int32_t id, int64_t num_neurons) {
  return "table_ids holds " + std::to_string(id) + " in a filled slot, outside [0, num_neurons = " +
         std::to_string(num_neurons) + "): the tables do not belong to this layer";
}

// Distinct non-negative labels in rows [row_begin, row_end).
int64_t CountDistinctLabels(const int32_t* labels, int64_t num_labels, int64_t row_begin,
                            int64_t row_end, IdMap* seen) {
  seen->Clear();
  for (int64_t i = row_begin * num_labels; i < row_end * num_labels; ++i) {
    if (labels[i] >= 0) seen->FindOrInsert(labels[i], 0);
  }
  return seen->size();
}

}  // namespace

void BuildTables(const TableShape& shape, int64_t num_neurons, const int32_t* codes,
                 Overflow overflow, uint64_t seed, int32_t* ids, int32_t* counts,
                 const ParallelFor& parallel_for) {
  const int64_t table_size = shape.num_buckets * shape.capacity;
  parallel_for(shape.num_tables, num_neurons * 20 + table_size, [&](int64_t begin, int64_t end) {
    for (int64_t l = begin; l < end; ++l) {
      int32_t* table_ids = ids + l * table_size;
      int32_t* table_counts = counts + l * shape.num_buckets;
      std::fill(table_ids, table_ids + table_size, -1);
      std::fill(table_counts, table_counts + shape.num_buckets, 0);
      Random random(seed, l);
      for (int64_t n = 0; n < num_neurons; ++n) {
        const int64_t bucket = codes[n * shape.num_tables + l];
        Insert(shape.capacity, overflow, &random, static_cast<int32_t>(n),
               table_ids + bucket * shape.capacity, table_counts + bucket);
      }
    }
  });
}

void UpdateTables(const TableShape& shape, int64_t num_updates, const int32_t* neuron_ids,
                  const int32_t* old_codes, const int32_t* new_codes, Overflow overflow,
                  uint64_t seed, int32_t* ids, int32_t* counts, const ParallelFor& parallel_for) {
  const int64_t table_size = shape.num_buckets * shape.capacity;
  parallel_for(shape.num_tables, num_updates * (shape.capacity + 20),
               [&](int64_t begin, int64_t end) {
                 for (int64_t l = begin; l < end; ++l) {
                   int32_t* table_ids = ids + l * table_size;
                   int32_t* table_counts = counts + l * shape.num_buckets;
                   Random random(seed, l);
                   for (int64_t i = 0; i < num_updates; ++i) {
                     const int64_t before = old_codes[i * shape.num_tables + l];
                     const int64_t after = new_codes[i * shape.num_tables + l];
                     if (before == after) continue;
                     Remove(shape.capacity, neuron_ids[i], table_ids + before * shape.capacity,
                            table_counts + before);
                     Insert(shape.capacity, overflow, &random, neuron_ids[i],
                            table_ids + after * shape.capacity, table_counts + after);
                   }
                 }
               });
}

int64_t FindInvalidCode(const int32_t* codes, int64_t count, int64_t num_buckets) {
  for (int64_t i = 0; i < count; ++i) {
    if (codes[i] < 0 || codes[i] >= num_buckets) return i;
  }
  return -1;
}

namespace {

// The batch-wide active set: what ActiveSetSelector::Select over the whole batch gives. A batch
// scans up to batch * num_tables * capacity slots (262k on the Amazon-670K shape) holding ~10^5
// distinct ids. A hash-map probe per slot misses the cache every time and a radix sort of the
// slots takes several passes; one increment per slot in a count per neuron takes one, and
// finds the ids in scan order on the way. Returns an id outside [0, num_neurons) met in a
// bucket, or 0.
int32_t SelectBatchWide(const TableShape& shape, int64_t batch, const int32_t* codes,
                        const int32_t* ids, const int32_t* counts, const int32_t* labels,
                        int64_t num_labels, const QueryOptions& options, int32_t* active,
                        BatchQueryScratch* scratch) {
  IdMap chosen(options.k);
  int64_t size = 0;
  const auto choose = [&](int32_t id) {
    if (chosen.Find(id) != nullptr) return;
    chosen.FindOrInsert(id, 0);
    active[size++] = id;
  };
  for (int64_t i = 0; i < batch * num_labels; ++i) {
    if (labels[i] >= 0) choose(labels[i]);
  }

  // Every stored slot of every example's buckets, in scan order (row, table, slot). Buckets
  // and counts are scattered over tens of MB: the next buckets' slots and the counts of the
  // ids a few slots on are prefetched.
  if (static_cast<int64_t>(scratch->neuron_counts.size()) < options.num_neurons) {
    scratch->neuron_counts.resize(options.num_neurons, 0);
  }
  int32_t* neuron_counts = scratch->neuron_counts.data();
  const auto in_layer = [&](int32_t id) {
    return static_cast<uint32_t>(id) < static_cast<uint64_t>(options.num_neurons);
  };
  const auto bucket_slots = [&](int64_t i) {  // i: flat index of (row, table)
    const int64_t bucket = (i % shape.num_tables) * shape.num_buckets + codes[i];
    return std::pair<const int32_t*, int64_t>(
        ids + bucket * shape.capacity, std::clamp<int64_t>(counts[bucket], 0, shape.capacity));
  };
  constexpr int64_t kBucketsAhead = 2, kSlotsAhead = 16;
  // `found` is sized for every slot, so that an id is appended without a branch (whether a
  // slot holds a new id is a coin flip for the branch predictor).
  std::vector<int32_t>& found = scratch->found;
  const int64_t num_buckets_met = batch * shape.num_tables;
  found.resize(std::max<int64_t>(found.size(), num_buckets_met * shape.capacity));
  int64_t num_found = 0;
  int32_t bad_table_id = 0;
  for (int64_t i = 0; i < num_buckets_met; ++i) {
    if (i + kBucketsAhead < num_buckets_met) {
      const auto [ahead, ahead_stored] = bucket_slots(i + kBucketsAhead);
      for (int64_t s = 0; s < ahead_stored; s += 16) __builtin_prefetch(ahead + s);
    }
    const auto [slots, stored] = bucket_slots(i);
    for (int64_t s = 0; s < stored; ++s) {
      if (s + kSlotsAhead < stored && in_layer(slots[s + kSlotsAhead])) {
        __builtin_prefetch(neuron_counts + slots[s + kSlotsAhead], 1);
      }
      const int32_t id = slots[s];
      if (!in_layer(id)) {
        bad_table_id = id;  // tables are user-assignable variables
        continue;
      }
      found[num_found] = id;
      num_found += neuron_counts[id]++ == 0;
    }
  }
  found.resize(num_found);

  // Candidates: found ids not already chosen, in the order found, with their counts. The chosen
  // ones (labels) are zeroed first, so that they are skipped without a lookup (a found id has a
  // count of at least 1). The same pass zeroes the counts for the next query.
  for (int64_t i = 0; i < size; ++i) neuron_counts[active[i]] = 0;
  std::vector<BatchQueryScratch::CountedId>& pool = scratch->pool;
  pool.clear();
  TopByCount top;
  for (const int32_t id : found) {
    const int32_t count = std::exchange(neuron_counts[id], 0);
    if (count == 0) continue;
    if (options.rule == QueryRule::kThreshold && count < options.min_count) continue;
    pool.push_back({id, count});
    top.Count(count);
  }
  const int64_t take = std::min<int64_t>(options.k - size, pool.size());
  if (options.rule == QueryRule::kUnion) {
    for (int64_t i = 0; i < take; ++i) choose(pool[i].id);
  } else {
    // Most tables first; ties go to the id found first.
    top.Take(pool.size(), [&pool](int64_t i) { return pool[i].count; }, take, &scratch->picked);
    for (const int32_t i : scratch->picked) choose(pool[i].id);
  }

  if (options.fill_random) {
    Random random(options.seed, /*stream=*/0);
    while (size < options.k) choose(static_cast<int32_t>(random.Uniform(options.num_neurons)));
  }
  std::fill(active + size, active + options.k, -1);
  return bad_table_id;
}

}  // namespace

std::string QueryTables(const TableShape& shape, int64_t batch, const int32_t* codes,
                        const int32_t* ids, const int32_t* counts, const int32_t* labels,
                        int64_t num_labels, const QueryOptions& options, int32_t* active,
                        const ParallelFor& parallel_for, BatchQueryScratch* scratch) {
  const int64_t per_row = num_labels + shape.num_tables * shape.capacity;
  if (num_labels > 0) {
    IdMap seen(options.batch_wide ? batch * num_labels : num_labels);
    for (int64_t b = 0; b < (options.batch_wide ? 1 : batch); ++b) {
      const int64_t row_end = options.batch_wide ? batch : b + 1;
      const int64_t distinct = CountDistinctLabels(labels, num_labels, b, row_end, &seen);
      if (distinct > options.k) {
        return "labels " + std::string(options.batch_wide ? "of the batch" : "of example ") +
               (options.batch_wide ? "" : std::to_string(b)) + " hold " +
               std::to_string(distinct) + " distinct labels, more than k = " +
               std::to_string(options.k);
      }
    }
  }
  if (options.batch_wide) {
    BatchQueryScratch own_scratch;
    const int32_t bad_table_id =
        SelectBatchWide(shape, batch, codes, ids, counts, labels, num_labels, options, active,
                        scratch != nullptr ? scratch : &own_scratch);
    return bad_table_id ? BadTableIdError(bad_table_id, options.num_neurons) : "";
  }
  std::atomic<int32_t> bad_table_id{0};
  parallel_for(batch, per_row * 30 + options.k * 10, [&](int64_t begin, int64_t end) {
    ActiveSetSelector selector(shape, ids, counts, options, per_row + options.k);
    for (int64_t b = begin; b < end; ++b) {
      selector.Select(b, b + 1, codes, labels, num_labels, /*stream=*/b, active + b * options.k);
    }
    if (selector.bad_table_id()) bad_table_id = selector.bad_table_id();
  });
  return bad_table_id ? BadTableIdError(bad_table_id, options.num_neurons) : "";
}

}  // namespace tf_lsh
