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
// The random fill of an example is seeded by its codes, not by its place in the batch, so
// that the units it computes do not depend on the batch it comes in: inference answers the
// same for an example alone or batched.
uint64_t CodesStream(const int32_t* codes, int64_t num_tables) {
  uint64_t stream = 0;
  for (int64_t l = 0; l < num_tables; ++l) {
    stream = Random(stream, static_cast<uint32_t>(codes[l])).Next();
  }
  return stream;
}

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
// slots takes several passes; a count per neuron takes two walks over the slots: one counts,
// the next finds each id at its first slot, in scan order, with its count.
//
// Large batches are counted in parts, one thread each, and no two threads ever write the same
// count (sharing counts cost a cache-line transfer per id; each thread scanning every slot for
// its own ids cost as much as the counting: benchmarks/README.md). The scan is cut into runs of
// consecutive buckets, which route each slot to the part of the id range its id falls in; each
// id range then counts its slots run by run, so it meets them in scan order. A slot's position
// in the scan orders ids found in different ranges, so every number of parts picks the same set.
constexpr int64_t kMaxQueryParts = 4;
constexpr int64_t kSlotsPerQueryPart = int64_t{1} << 15;
// Counts are 16-bit (the id range of a part then fits in a core's L2 on the Amazon-670K shape)
// and saturate: only ids held by more than 65,535 of a batch's buckets could be misordered.
constexpr uint16_t kMaxCount = 0xffff;

using FoundId = BatchQueryScratch::FoundId;

class BatchWideSelector {
 public:
  BatchWideSelector(const TableShape& shape, int64_t batch, const int32_t* codes,
                    const int32_t* ids, const int32_t* counts, const QueryOptions& options,
                    BatchQueryScratch* scratch)
      : shape_(shape),
        codes_(codes),
        ids_(ids),
        counts_(counts),
        options_(options),
        scratch_(*scratch),
        num_buckets_met_(batch * shape.num_tables),
        parts_(std::clamp<int64_t>(num_buckets_met_ * shape.capacity / kSlotsPerQueryPart, 1,
                                   kMaxQueryParts)),
        // part of id = floor(id * parts / num_neurons), by a multiplication.
        range_scale_((static_cast<uint64_t>(parts_) << 32) /
                     static_cast<uint64_t>(std::max<int64_t>(options.num_neurons, 1))),
        bad_ids_(parts_, 0),
        histograms_(parts_) {
    if (static_cast<int64_t>(scratch_.neuron_counts.size()) < options.num_neurons) {
      scratch_.neuron_counts.resize(options.num_neurons, 0);
    }
    scratch_.pools.resize(parts_);
    scratch_.selected.resize(parts_);
  }

  // Hands the picked ids, best first, to `choose`; active[0 .. size) are the ids chosen
  // already (labels), which are not picked again. Returns an id outside [0, num_neurons) met in
  // a bucket, or 0.
  template <typename Choose>
  int32_t Select(const int32_t* active, int64_t size, const ParallelFor& parallel_for,
                 const Choose& choose) {
    const int64_t cost = 10 * num_buckets_met_ * shape_.capacity / parts_ + 1;
    if (parts_ > 1) {
      if (static_cast<int64_t>(scratch_.routed.size()) < parts_ * parts_ * RunCapacity()) {
        scratch_.routed.resize(parts_ * parts_ * RunCapacity());
      }
      parallel_for(parts_, cost, [&](int64_t begin, int64_t end) { Route(begin, end); });
    }
    parallel_for(parts_, cost, [&](int64_t begin, int64_t end) {
      for (int64_t part = begin; part < end; ++part) CountRange(part, active, size);
    });
    const int64_t take = Cut(options_.k - size);
    if (take > 0) {
      parallel_for(parts_, cost / 4, [&](int64_t begin, int64_t end) {
        for (int64_t part = begin; part < end; ++part) SelectBest(part);
      });
      Merge(take, choose);
    }
    for (const int32_t id : bad_ids_) {
      if (id != 0) return id;
    }
    return 0;
  }

 private:
  int64_t RangeOf(int32_t id) const {
    return static_cast<int64_t>((static_cast<uint64_t>(id) * range_scale_) >> 32);
  }
  bool InLayer(int32_t id) const {
    return static_cast<uint32_t>(id) < static_cast<uint64_t>(options_.num_neurons);
  }
  int64_t RunBegin(int64_t run) const { return num_buckets_met_ * run / parts_; }
  int64_t RunCapacity() const { return CeilDiv(num_buckets_met_, parts_) * shape_.capacity; }
  uint64_t* Routed(int64_t run, int64_t range) {
    return scratch_.routed.data() + (run * parts_ + range) * RunCapacity();
  }

  // Calls visit(slots, stored, position of slots[0]) on buckets met [first, last) in scan order
  // (row, table). Buckets are scattered over tens of MB: the next ones are prefetched.
  template <typename Visit>
  void ForEachBucket(int64_t first, int64_t last, const Visit& visit) const {
    constexpr int64_t kBucketsAhead = 2;
    const auto bucket_slots = [&](int64_t i) {  // i: flat index of (row, table)
      const int64_t bucket = (i % shape_.num_tables) * shape_.num_buckets + codes_[i];
      return std::pair<const int32_t*, int64_t>(
          ids_ + bucket * shape_.capacity,
          std::clamp<int64_t>(counts_[bucket], 0, shape_.capacity));
    };
    for (int64_t i = first; i < last; ++i) {
      if (i + kBucketsAhead < last) {
        const auto [ahead, ahead_stored] = bucket_slots(i + kBucketsAhead);
        for (int64_t s = 0; s < ahead_stored; s += 16) __builtin_prefetch(ahead + s);
      }
      const auto [slots, stored] = bucket_slots(i);
      visit(slots, stored, static_cast<int32_t>(i * shape_.capacity));
    }
  }

  // Scan runs [begin, end): each slot to the list of (run, id range), as position << 32 | id.
  void Route(int64_t begin, int64_t end) {
    for (int64_t run = begin; run < end; ++run) {
      uint64_t* next[kMaxQueryParts];
      for (int64_t range = 0; range < parts_; ++range) next[range] = Routed(run, range);
      ForEachBucket(RunBegin(run), RunBegin(run + 1),
                    [&](const int32_t* slots, int64_t stored, int32_t position) {
                      for (int64_t s = 0; s < stored; ++s) {
                        const int32_t id = slots[s];
                        if (!InLayer(id)) {
                          bad_ids_[run] = id;  // tables are user-assignable variables
                          continue;
                        }
                        *next[RangeOf(id)]++ = static_cast<uint64_t>(position + s) << 32 |
                                               static_cast<uint32_t>(id);
                      }
                    });
      for (int64_t range = 0; range < parts_; ++range) {
        routed_sizes_[run * parts_ + range] = next[range] - Routed(run, range);
      }
    }
  }

  // Calls visit(id, position) on the valid slots of one id range, in scan order.
  template <typename Visit>
  void ForEachSlot(int64_t range, const Visit& visit) {
    const uint16_t* neuron_counts = scratch_.neuron_counts.data();
    constexpr int64_t kSlotsAhead = 16;  // the counts are scattered over MBs too
    if (parts_ == 1) {
      ForEachBucket(0, num_buckets_met_, [&](const int32_t* slots, int64_t stored,
                                             int32_t position) {
        for (int64_t s = 0; s < stored; ++s) {
          if (s + kSlotsAhead < stored && InLayer(slots[s + kSlotsAhead])) {
            __builtin_prefetch(neuron_counts + slots[s + kSlotsAhead], 1);
          }
          if (!InLayer(slots[s])) {
            bad_ids_[0] = slots[s];  // tables are user-assignable variables
            continue;
          }
          visit(slots[s], position + static_cast<int32_t>(s));
        }
      });
      return;
    }
    for (int64_t run = 0; run < parts_; ++run) {
      const uint64_t* keys = Routed(run, range);
      const int64_t n = routed_sizes_[run * parts_ + range];
      for (int64_t j = 0; j < n; ++j) {
        if (j + kSlotsAhead < n) {
          __builtin_prefetch(neuron_counts + static_cast<uint32_t>(keys[j + kSlotsAhead]), 1);
        }
        visit(static_cast<int32_t>(static_cast<uint32_t>(keys[j])),
              static_cast<int32_t>(keys[j] >> 32));
      }
    }
  }

  // Counts the slots of one id range, then walks them again in scan order: the first slot of
  // each id adds it to the range's pool with its count and zeroes the count (for the later
  // slots, and for the next query). The pool holds the ids not chosen already (labels) that
  // pass the rule's threshold, in the order found.
  void CountRange(int64_t range, const int32_t* active, int64_t size) {
    uint16_t* neuron_counts = scratch_.neuron_counts.data();
    int64_t num_slots = 0;
    ForEachSlot(range, [&](int32_t id, int32_t) {
      neuron_counts[id] += neuron_counts[id] != kMaxCount;  // saturates
      ++num_slots;
    });
    // Chosen ids are zeroed, so that the second walk skips them without a lookup.
    for (int64_t i = 0; i < size; ++i) {
      if (RangeOf(active[i]) == range) neuron_counts[active[i]] = 0;
    }
    // Sized for every slot, so that an id is appended without a branch (whether a slot holds
    // a new id is a coin flip for the branch predictor).
    std::vector<FoundId>& pool = scratch_.pools[range];
    if (static_cast<int64_t>(pool.size()) < num_slots + 1) pool.resize(num_slots + 1);
    FoundId* out = pool.data();
    int64_t pool_size = 0;
    std::vector<int64_t>& histogram = histograms_[range];
    histogram.assign(2, 0);
    const int32_t min_count = options_.rule == QueryRule::kThreshold
                                  ? static_cast<int32_t>(std::max<int64_t>(options_.min_count, 1))
                                  : 1;
    const bool by_order_found = options_.rule == QueryRule::kUnion;
    ForEachSlot(range, [&](int32_t id, int32_t position) {
      int32_t count = std::exchange(neuron_counts[id], 0);
      const bool keep = count >= min_count;
      if (by_order_found) count = keep;
      out[pool_size] = {id, count, position};
      pool_size += keep;
      if (count >= static_cast<int64_t>(histogram.size())) histogram.resize(count + 1, 0);
      histogram[count] += keep;
    });
    histogram[0] = 0;
    pool_sizes_[range] = pool_size;
  }

  // Sets cut_ (the lowest count that gets picked) and at_cut_ (how many of that count), so
  // that the most frequent `wanted` candidates are picked; returns how many are (at most all).
  int64_t Cut(int64_t wanted) {
    int64_t max_count = 0, pool = 0;
    for (int64_t range = 0; range < parts_; ++range) {
      max_count = std::max<int64_t>(max_count, histograms_[range].size());
      pool += pool_sizes_[range];
    }
    const int64_t take = std::min(wanted, pool);
    if (take <= 0) return 0;
    total_histogram_.assign(max_count, 0);
    for (const std::vector<int64_t>& histogram : histograms_) {
      for (size_t c = 0; c < histogram.size(); ++c) total_histogram_[c] += histogram[c];
    }
    int64_t above = 0;
    cut_ = max_count - 1;
    while (above + total_histogram_[cut_] < take) above += total_histogram_[cut_--];
    at_cut_ = take - above;
    return take;
  }

  // The range's candidates that may be picked, grouped by count descending, each group in
  // the order found: all of counts above the cut, the first at_cut_ of the cut's count. Group
  // c is [starts_[range][c], ends_[range][c]) of selected[range].
  void SelectBest(int64_t range) {
    const std::vector<int64_t>& histogram = histograms_[range];
    std::vector<int64_t>& starts = starts_[range];
    starts.assign(histogram.size(), 0);
    int64_t total = 0;
    for (int64_t c = static_cast<int64_t>(histogram.size()) - 1; c >= cut_; --c) {
      starts[c] = total;
      total += c == cut_ ? std::min(histogram[c], at_cut_) : histogram[c];
    }
    std::vector<int64_t>& ends = ends_[range];
    ends = starts;
    std::vector<FoundId>& selected = scratch_.selected[range];
    if (static_cast<int64_t>(selected.size()) < total) selected.resize(total);
    const FoundId* pool = scratch_.pools[range].data();
    int64_t placed = 0, at_cut = 0;
    for (int64_t i = 0; i < pool_sizes_[range] && placed < total; ++i) {
      const int32_t count = pool[i].count;
      if (count < cut_ || (count == cut_ && at_cut == at_cut_)) continue;
      at_cut += count == cut_;
      selected[ends[count]++] = pool[i];
      ++placed;
    }
  }

  // The picks of all ranges, count by count, each count's ids in the order found.
  template <typename Choose>
  void Merge(int64_t take, const Choose& choose) {
    for (int64_t c = static_cast<int64_t>(total_histogram_.size()) - 1; c >= cut_ && take > 0;
         --c) {
      int64_t heads[kMaxQueryParts], ends[kMaxQueryParts];
      for (int64_t range = 0; range < parts_; ++range) {
        const bool has = c < static_cast<int64_t>(starts_[range].size());
        heads[range] = has ? starts_[range][c] : 0;
        ends[range] = has ? ends_[range][c] : 0;
      }
      for (; take > 0; --take) {
        int64_t best = -1;
        for (int64_t range = 0; range < parts_; ++range) {
          if (heads[range] == ends[range]) continue;
          if (best < 0 || scratch_.selected[range][heads[range]].position <
                              scratch_.selected[best][heads[best]].position) {
            best = range;
          }
        }
        if (best < 0) break;
        choose(scratch_.selected[best][heads[best]++].id);
      }
    }
  }

  static int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

  const TableShape& shape_;
  const int32_t* codes_;
  const int32_t* ids_;
  const int32_t* counts_;
  const QueryOptions& options_;
  BatchQueryScratch& scratch_;
  const int64_t num_buckets_met_;
  const int64_t parts_;
  const uint64_t range_scale_;
  std::vector<int32_t> bad_ids_;                  // per part
  std::vector<std::vector<int64_t>> histograms_;  // per id range: pool ids by count
  int64_t routed_sizes_[kMaxQueryParts * kMaxQueryParts] = {};
  int64_t pool_sizes_[kMaxQueryParts] = {};
  std::vector<int64_t> starts_[kMaxQueryParts];  // per id range: its picks of each count in
  std::vector<int64_t> ends_[kMaxQueryParts];    // selected[range][starts_[c], ends_[c])
  std::vector<int64_t> total_histogram_;
  int64_t cut_ = 0;
  int64_t at_cut_ = 0;
};

int32_t SelectBatchWide(const TableShape& shape, int64_t batch, const int32_t* codes,
                        const int32_t* ids, const int32_t* counts, const int32_t* labels,
                        int64_t num_labels, const QueryOptions& options, int32_t* active,
                        const ParallelFor& parallel_for, BatchQueryScratch* scratch) {
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
  BatchWideSelector selector(shape, batch, codes, ids, counts, options, scratch);
  const int32_t bad_table_id = selector.Select(active, size, parallel_for, choose);
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
    if (batch * shape.num_tables * shape.capacity > std::numeric_limits<int32_t>::max()) {
      return "a batch-wide query scans batch * num_tables * capacity = " +
             std::to_string(batch * shape.num_tables * shape.capacity) +
             " slots, more than 2^31 - 1: split the batch";
    }
    BatchQueryScratch own_scratch;
    const int32_t bad_table_id =
        SelectBatchWide(shape, batch, codes, ids, counts, labels, num_labels, options, active,
                        parallel_for, scratch != nullptr ? scratch : &own_scratch);
    return bad_table_id ? BadTableIdError(bad_table_id, options.num_neurons) : "";
  }
  std::atomic<int32_t> bad_table_id{0};
  parallel_for(batch, per_row * 30 + options.k * 10, [&](int64_t begin, int64_t end) {
    ActiveSetSelector selector(shape, ids, counts, options, per_row + options.k);
    for (int64_t b = begin; b < end; ++b) {
      selector.Select(b, b + 1, codes, labels, num_labels,
                      CodesStream(codes + b * shape.num_tables, shape.num_tables),
                      active + b * options.k);
    }
    if (selector.bad_table_id()) bad_table_id = selector.bad_table_id();
  });
  return bad_table_id ? BadTableIdError(bad_table_id, options.num_neurons) : "";
}

}  // namespace tf_lsh
