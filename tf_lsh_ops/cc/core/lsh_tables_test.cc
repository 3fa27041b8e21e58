#include "tf_lsh_ops/cc/core/lsh_tables.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "tf_lsh_ops/cc/core/bench_util.h"
#include "tf_lsh_ops/cc/core/test_util.h"

namespace tf_lsh {
namespace {

// A ParallelFor that cuts the work into shards of one unit.
ParallelFor OneByOneFor() {
  return [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    for (int64_t i = 0; i < total; ++i) fn(i, i + 1);
  };
}

struct Tables {
  explicit Tables(const TableShape& s)
      : shape(s),
        ids(s.num_tables * s.num_buckets * s.capacity, -7),
        counts(s.num_tables * s.num_buckets, -7) {}

  // The stored ids of one bucket.
  std::vector<int32_t> Bucket(int64_t table, int64_t bucket) const {
    const int64_t b = table * shape.num_buckets + bucket;
    const int64_t stored = std::min<int64_t>(counts[b], shape.capacity);
    std::vector<int32_t> out(ids.begin() + b * shape.capacity,
                             ids.begin() + b * shape.capacity + stored);
    for (int64_t s = stored; s < shape.capacity; ++s) CHECK_TRUE(ids[b * shape.capacity + s] == -1);
    return out;
  }

  std::set<int32_t> BucketSet(int64_t table, int64_t bucket) const {
    const std::vector<int32_t> v = Bucket(table, bucket);
    return std::set<int32_t>(v.begin(), v.end());
  }

  TableShape shape;
  std::vector<int32_t> ids, counts;
};

Tables Build(const TableShape& shape, const std::vector<int32_t>& codes, Overflow overflow,
             uint64_t seed, const ParallelFor& parallel_for = SerialFor()) {
  Tables t(shape);
  BuildTables(shape, static_cast<int64_t>(codes.size() / shape.num_tables), codes.data(), overflow,
              seed, t.ids.data(), t.counts.data(), parallel_for);
  return t;
}

void TestExampleFromHeader() {
  int32_t codes[3] = {1, 1, 0}, ids[4], counts[2];
  BuildTables({1, 2, 2}, 3, codes, Overflow::kFifo, 0, ids, counts, SerialFor());
  const int32_t want_ids[4] = {2, -1, 0, 1}, want_counts[2] = {1, 2};
  for (int i = 0; i < 4; ++i) CHECK_TRUE(ids[i] == want_ids[i]);
  for (int i = 0; i < 2; ++i) CHECK_TRUE(counts[i] == want_counts[i]);
}

void TestBuildMatchesLoops() {
  std::mt19937 rng(3);
  const TableShape shape{4, 8, 64};  // large enough that nothing overflows
  const int64_t neurons = 100;
  std::vector<int32_t> codes(neurons * shape.num_tables);
  for (auto& c : codes) c = static_cast<int32_t>(rng() % shape.num_buckets);
  for (Overflow overflow : {Overflow::kFifo, Overflow::kReservoir}) {
    const Tables t = Build(shape, codes, overflow, 1, OneByOneFor());
    for (int64_t l = 0; l < shape.num_tables; ++l) {
      for (int64_t b = 0; b < shape.num_buckets; ++b) {
        std::vector<int32_t> want;  // insertion order
        for (int64_t n = 0; n < neurons; ++n) {
          if (codes[n * shape.num_tables + l] == b) want.push_back(static_cast<int32_t>(n));
        }
        CHECK_TRUE(t.counts[l * shape.num_buckets + b] == static_cast<int32_t>(want.size()));
        CHECK_TRUE(t.Bucket(l, b) == want);
      }
    }
  }
}

void TestFifoKeepsTheLast() {
  // 1 table, 2 buckets of capacity 3; neurons 0..6 all hash to bucket 1.
  const TableShape shape{1, 2, 3};
  const Tables t = Build(shape, std::vector<int32_t>(7, 1), Overflow::kFifo, 0);
  CHECK_TRUE(t.counts[0] == 0 && t.counts[1] == 7);
  // A ring: 3, 4, 5 overwrite slots 0, 1, 2, then 6 overwrites slot 0.
  CHECK_TRUE((t.Bucket(0, 1) == std::vector<int32_t>{6, 4, 5}));
  CHECK_TRUE(t.Bucket(0, 0).empty());
}

void TestReservoir() {
  const TableShape shape{2, 2, 4};
  const int64_t neurons = 100;
  std::vector<int32_t> codes(neurons * 2, 0);  // all neurons in bucket 0 of both tables
  const Tables a = Build(shape, codes, Overflow::kReservoir, 5);
  const Tables b = Build(shape, codes, Overflow::kReservoir, 5, OneByOneFor());
  CHECK_TRUE(a.ids == b.ids && a.counts == b.counts);
  for (int64_t l = 0; l < 2; ++l) {
    CHECK_TRUE(a.counts[l * 2] == neurons);
    const std::set<int32_t> kept = a.BucketSet(l, 0);
    CHECK_TRUE(kept.size() == 4);  // exactly capacity, distinct
    for (int32_t id : kept) CHECK_TRUE(id >= 0 && id < neurons);
  }
  CHECK_TRUE(a.BucketSet(0, 0) != a.BucketSet(1, 0));  // tables draw independently

  // Each neuron is kept with probability capacity / neurons, whatever its position.
  std::vector<int> kept_count(neurons, 0);
  const int trials = 4000;
  int differs = 0;
  std::set<int32_t> previous;
  for (int seed = 0; seed < trials; ++seed) {
    const Tables t = Build({1, 1, 4}, std::vector<int32_t>(neurons, 0), Overflow::kReservoir,
                           seed);
    const std::set<int32_t> kept = t.BucketSet(0, 0);
    CHECK_TRUE(kept.size() == 4);
    differs += kept != previous;
    previous = kept;
    for (int32_t id : kept) ++kept_count[id];
  }
  CHECK_TRUE(differs > trials * 9 / 10);
  int first_half = 0, second_half = 0;
  for (int64_t n = 0; n < neurons; ++n) {
    (n < neurons / 2 ? first_half : second_half) += kept_count[n];
  }
  // Expected 8000 each (sd ~ 60); FIFO would give 0 / 16000.
  CHECK_TRUE(first_half > 7500 && second_half > 7500);
  const double expected = trials * 4.0 / neurons;  // 160
  CHECK_NEAR(kept_count[0], expected, 60);
  CHECK_NEAR(kept_count[neurons - 1], expected, 60);
}

void TestUpdateEqualsRebuild() {
  std::mt19937 rng(17);
  const TableShape shape{3, 16, 40};  // no overflow with 120 neurons
  const int64_t neurons = 120;
  std::vector<int32_t> old_codes(neurons * shape.num_tables);
  for (auto& c : old_codes) c = static_cast<int32_t>(rng() % shape.num_buckets);
  std::vector<int32_t> new_codes = old_codes;
  std::vector<int32_t> moved, moved_old, moved_new;
  for (int64_t n = 0; n < neurons; n += 3) {  // a third of the neurons, some staying put
    moved.push_back(static_cast<int32_t>(n));
    for (int64_t l = 0; l < shape.num_tables; ++l) {
      moved_old.push_back(old_codes[n * shape.num_tables + l]);
      if (rng() % 4 != 0) {
        new_codes[n * shape.num_tables + l] = static_cast<int32_t>(rng() % shape.num_buckets);
      }
      moved_new.push_back(new_codes[n * shape.num_tables + l]);
    }
  }
  for (Overflow overflow : {Overflow::kFifo, Overflow::kReservoir}) {
    Tables t = Build(shape, old_codes, overflow, 2);
    UpdateTables(shape, static_cast<int64_t>(moved.size()), moved.data(), moved_old.data(),
                 moved_new.data(), overflow, 3, t.ids.data(), t.counts.data(), OneByOneFor());
    const Tables fresh = Build(shape, new_codes, overflow, 2);
    CHECK_TRUE(t.counts == fresh.counts);
    for (int64_t l = 0; l < shape.num_tables; ++l) {
      for (int64_t b = 0; b < shape.num_buckets; ++b) {
        const std::vector<int32_t> bucket = t.Bucket(l, b);
        CHECK_TRUE(std::set<int32_t>(bucket.begin(), bucket.end()).size() == bucket.size());
        CHECK_TRUE(t.BucketSet(l, b) == fresh.BucketSet(l, b));
      }
    }
  }
}

void TestUpdateWithOverflow() {
  // 1 table, 2 buckets of capacity 2. Neurons 0, 1, 2 in bucket 0 (FIFO keeps 2, 1), 3 in 1.
  const TableShape shape{1, 2, 2};
  Tables t = Build(shape, {0, 0, 0, 1}, Overflow::kFifo, 0);
  CHECK_TRUE((t.BucketSet(0, 0) == std::set<int32_t>{1, 2}) && t.counts[0] == 3);
  // Move the dropped neuron 0 to bucket 1: inserted there, bucket 0 unchanged.
  int32_t neuron = 0, before = 0, after = 1;
  UpdateTables(shape, 1, &neuron, &before, &after, Overflow::kFifo, 0, t.ids.data(),
               t.counts.data(), SerialFor());
  CHECK_TRUE((t.BucketSet(0, 0) == std::set<int32_t>{1, 2}));
  CHECK_TRUE((t.BucketSet(0, 1) == std::set<int32_t>{0, 3}) && t.counts[1] == 2);
  // Move the stored neuron 2 to bucket 1: it leaves bucket 0 and overwrites the oldest of 1.
  neuron = 2;
  UpdateTables(shape, 1, &neuron, &before, &after, Overflow::kFifo, 0, t.ids.data(),
               t.counts.data(), SerialFor());
  CHECK_TRUE((t.BucketSet(0, 0) == std::set<int32_t>{1}));
  CHECK_TRUE((t.BucketSet(0, 1) == std::set<int32_t>{0, 2}) && t.counts[1] == 3);
  // An unchanged code is a no-op.
  neuron = 1;
  before = after = 0;
  const std::vector<int32_t> ids = t.ids, counts = t.counts;
  UpdateTables(shape, 1, &neuron, &before, &after, Overflow::kFifo, 0, t.ids.data(),
               t.counts.data(), SerialFor());
  CHECK_TRUE(t.ids == ids && t.counts == counts);
}

void TestFindInvalidCode() {
  const int32_t codes[5] = {0, 3, 1, 4, -1};
  CHECK_TRUE(FindInvalidCode(codes, 3, 4) == -1);
  CHECK_TRUE(FindInvalidCode(codes, 5, 4) == 3);
  CHECK_TRUE(FindInvalidCode(codes + 4, 1, 4) == 0);
}

// 3 tables of 4 buckets, capacity 3, 10 neurons. Query codes (1, 2, 0) meet
//   table 0 bucket 1: {1, 2, 3};  table 1 bucket 2: {2, 3, 4};  table 2 bucket 0: {3, 5}
// so 3 is found 3 times, 2 twice, 1, 4, 5 once (found in the order 1, 2, 3, 4, 5).
// Codes (0, 0, 1) meet {6}, {7, 8}, {8, 9}.
struct QueryFixture {
  const TableShape shape{3, 4, 3};
  std::vector<int32_t> ids = std::vector<int32_t>(3 * 4 * 3, -1);
  std::vector<int32_t> counts = std::vector<int32_t>(3 * 4, 0);

  QueryFixture() {
    Put(0, 1, {1, 2, 3});
    Put(1, 2, {2, 3, 4});
    Put(2, 0, {3, 5});
    Put(0, 0, {6});
    Put(1, 0, {7, 8});
    Put(2, 1, {8, 9});
  }

  void Put(int64_t table, int64_t bucket, const std::vector<int32_t>& neurons) {
    const int64_t b = table * shape.num_buckets + bucket;
    std::copy(neurons.begin(), neurons.end(), ids.begin() + b * shape.capacity);
    counts[b] = static_cast<int32_t>(neurons.size());
  }

  std::vector<int32_t> Query(const std::vector<int32_t>& codes, const QueryOptions& options,
                             const std::vector<int32_t>& labels = {}, int64_t num_labels = 0,
                             std::string* error = nullptr,
                             BatchQueryScratch* scratch = nullptr) const {
    const int64_t batch = static_cast<int64_t>(codes.size()) / shape.num_tables;
    std::vector<int32_t> active((options.batch_wide ? 1 : batch) * options.k, -7);
    const std::string e = QueryTables(shape, batch, codes.data(), ids.data(), counts.data(),
                                      labels.empty() ? nullptr : labels.data(), num_labels,
                                      options, active.data(), OneByOneFor(), scratch);
    if (error != nullptr) {
      *error = e;
    } else {
      CHECK_TRUE(e.empty());
    }
    return active;
  }
};

QueryOptions Options(int64_t k, QueryRule rule = QueryRule::kFrequency) {
  QueryOptions options;
  options.k = k;
  options.num_neurons = 10;
  options.rule = rule;
  return options;
}

void TestQueryRules() {
  const QueryFixture f;
  const std::vector<int32_t> codes = {1, 2, 0};
  // Most tables first, ties in the order found.
  CHECK_TRUE((f.Query(codes, Options(4)) == std::vector<int32_t>{3, 2, 1, 4}));
  CHECK_TRUE((f.Query(codes, Options(2)) == std::vector<int32_t>{3, 2}));
  CHECK_TRUE((f.Query(codes, Options(7)) == std::vector<int32_t>{3, 2, 1, 4, 5, -1, -1}));
  // Union: table order.
  CHECK_TRUE((f.Query(codes, Options(4, QueryRule::kUnion)) == std::vector<int32_t>{1, 2, 3, 4}));
  CHECK_TRUE((f.Query(codes, Options(6, QueryRule::kUnion)) ==
              std::vector<int32_t>{1, 2, 3, 4, 5, -1}));
  // Threshold: at least min_count tables, most frequent first.
  QueryOptions threshold = Options(4, QueryRule::kThreshold);
  threshold.min_count = 2;
  CHECK_TRUE((f.Query(codes, threshold) == std::vector<int32_t>{3, 2, -1, -1}));
  threshold.min_count = 3;
  CHECK_TRUE((f.Query(codes, threshold) == std::vector<int32_t>{3, -1, -1, -1}));
  threshold.min_count = 4;
  CHECK_TRUE((f.Query(codes, threshold) == std::vector<int32_t>{-1, -1, -1, -1}));
  threshold.min_count = 1;
  CHECK_TRUE((f.Query(codes, threshold) == f.Query(codes, Options(4))));
  // Two rows at once are two independent queries.
  const std::vector<int32_t> two = f.Query({1, 2, 0, 0, 0, 1}, Options(4));
  CHECK_TRUE((two == std::vector<int32_t>{3, 2, 1, 4, 8, 6, 7, 9}));
}

void TestQueryLabels() {
  const QueryFixture f;
  const std::vector<int32_t> codes = {1, 2, 0};
  // Labels first (once each, -1 skipped), then the rule without the labels.
  CHECK_TRUE((f.Query(codes, Options(4), {7, -1, 2, 7}, 4) == std::vector<int32_t>{7, 2, 3, 1}));
  CHECK_TRUE((f.Query(codes, Options(4, QueryRule::kUnion), {3, -1}, 2) ==
              std::vector<int32_t>{3, 1, 2, 4}));
  // Labels alone fill k.
  CHECK_TRUE((f.Query(codes, Options(2), {9, 0}, 2) == std::vector<int32_t>{9, 0}));
  // Only padding: as without labels.
  CHECK_TRUE((f.Query(codes, Options(4), {-1, -1}, 2) == f.Query(codes, Options(4))));
  // Repeated labels count once.
  CHECK_TRUE((f.Query(codes, Options(2), {5, 5, 5}, 3) == std::vector<int32_t>{5, 3}));
  // More distinct labels than k: an error naming the example.
  std::string error;
  f.Query({1, 2, 0, 1, 2, 0}, Options(2), {0, -1, -1, 4, 5, 6}, 3, &error);
  CHECK_TRUE(error.find("example 1") != std::string::npos);
  CHECK_TRUE(error.find("3 distinct labels") != std::string::npos);
  CHECK_TRUE(error.find("k = 2") != std::string::npos);
}

void TestQueryFillRandom() {
  const QueryFixture f;
  QueryOptions options = Options(8, QueryRule::kThreshold);
  options.min_count = 2;
  options.fill_random = true;
  options.seed = 4;
  const std::vector<int32_t> codes = {1, 2, 0, 1, 2, 0, 0, 0, 1};
  const std::vector<int32_t> active = f.Query(codes, options);
  for (int64_t b = 0; b < 3; ++b) {
    const std::vector<int32_t> row(active.begin() + b * 8, active.begin() + b * 8 + 8);
    std::set<int32_t> distinct(row.begin(), row.end());
    CHECK_TRUE(distinct.size() == 8);
    for (int32_t id : row) CHECK_TRUE(id >= 0 && id < 10);
  }
  CHECK_TRUE(active[0] == 3 && active[1] == 2);  // the rule's ids come first
  CHECK_TRUE(active[16] == 8);
  // Seeded: the same seed repeats, another seed differs. The fill follows an example's codes,
  // not its row: rows 0 and 1 ask the same query and get the same set, alone or together.
  CHECK_TRUE(f.Query(codes, options) == active);
  CHECK_TRUE(std::equal(active.begin(), active.begin() + 8, active.begin() + 8));
  const std::vector<int32_t> second_alone =
      f.Query(std::vector<int32_t>(codes.begin() + 3, codes.begin() + 6), options);
  CHECK_TRUE(std::equal(second_alone.begin(), second_alone.end(), active.begin() + 8));
  bool any_differs = false;
  for (uint64_t seed = 5; seed < 10 && !any_differs; ++seed) {
    options.seed = seed;
    any_differs = f.Query(codes, options) != active;
  }
  CHECK_TRUE(any_differs);

  // k == num_neurons: every id once, labels first.
  options.k = 10;
  const std::vector<int32_t> all = f.Query({1, 2, 0}, options, {9, -1}, 2);
  CHECK_TRUE(all[0] == 9 && all[1] == 3 && all[2] == 2);
  std::vector<int32_t> sorted = all;
  std::sort(sorted.begin(), sorted.end());
  for (int32_t i = 0; i < 10; ++i) CHECK_TRUE(sorted[i] == i);
}

void TestQueryBatchWide() {
  const QueryFixture f;
  // Rows (1, 2, 0) and (0, 0, 1): frequencies 3: 3, 2: 2, 8: 2, then 1, 4, 5, 6, 7, 9 once.
  QueryOptions options = Options(5);
  options.batch_wide = true;
  const std::vector<int32_t> codes = {1, 2, 0, 0, 0, 1};
  CHECK_TRUE((f.Query(codes, options) == std::vector<int32_t>{3, 2, 8, 1, 4}));
  // Labels of every row come first.
  CHECK_TRUE((f.Query(codes, options, {0, -1, 9, 0}, 2) == std::vector<int32_t>{0, 9, 3, 2, 8}));
  options.rule = QueryRule::kUnion;
  CHECK_TRUE((f.Query(codes, options) == std::vector<int32_t>{1, 2, 3, 4, 5}));
  // Too many distinct labels over the batch.
  std::string error;
  options.k = 2;
  f.Query(codes, options, {0, 1, 2, 1}, 2, &error);
  CHECK_TRUE(error.find("of the batch") != std::string::npos);
  // Empty batch: all padding, or all random with fill.
  options.k = 3;
  CHECK_TRUE((f.Query({}, options) == std::vector<int32_t>{-1, -1, -1}));
  options.fill_random = true;
  const std::vector<int32_t> filled = f.Query({}, options);
  CHECK_TRUE(std::set<int32_t>(filled.begin(), filled.end()).size() == 3);
}

// A kept scratch serves query after query (the op kernel keeps one): each answer is what a
// fresh query gives, and the counts are all zero again afterwards, also after bad table ids.
void TestQueryBatchWideKeptScratch() {
  QueryFixture f;
  f.ids[(0 * 4 + 0) * 3 + 1] = 12;  // table 0, bucket 0, slot 1: an id outside the layer
  const std::vector<std::vector<int32_t>> batches = {{1, 2, 0, 0, 0, 1}, {0, 0, 1}, {1, 2, 0}};
  for (const QueryRule rule : {QueryRule::kFrequency, QueryRule::kUnion, QueryRule::kThreshold}) {
    QueryOptions options = Options(4, rule);
    options.batch_wide = true;
    options.min_count = 2;
    BatchQueryScratch scratch;
    for (const std::vector<int32_t>& codes : batches) {
      std::string want_error, error;
      const std::vector<int32_t> want = f.Query(codes, options, {}, 0, &want_error);
      CHECK_TRUE(f.Query(codes, options, {}, 0, &error, &scratch) == want);
      CHECK_TRUE(error == want_error);
      for (const int32_t count : scratch.neuron_counts) CHECK_TRUE(count == 0);
    }
  }
}

// The batch-wide set by its definition: labels first, then the ids of the scanned slots by
// count (slots holding them) descending, ties by the first slot, in scan order; -1 padding.
std::vector<int32_t> ReferenceBatchWide(const TableShape& shape, const std::vector<int32_t>& codes,
                                        const Tables& t, const std::vector<int32_t>& labels,
                                        const QueryOptions& options) {
  std::vector<int32_t> active;
  for (const int32_t label : labels) {
    if (label >= 0 && std::find(active.begin(), active.end(), label) == active.end()) {
      active.push_back(label);
    }
  }
  std::map<int32_t, std::pair<int64_t, int64_t>> seen;  // id -> (count, first position)
  int64_t position = 0;
  for (size_t i = 0; i < codes.size(); ++i) {
    const int64_t bucket =
        static_cast<int64_t>(i % shape.num_tables) * shape.num_buckets + codes[i];
    const int64_t stored = std::min<int64_t>(t.counts[bucket], shape.capacity);
    for (int64_t s = 0; s < shape.capacity; ++s, ++position) {
      if (s >= stored) continue;
      auto [it, is_new] = seen.insert({t.ids[bucket * shape.capacity + s], {0, position}});
      ++it->second.first;
    }
  }
  std::vector<std::tuple<int64_t, int64_t, int32_t>> pool;  // (-count, first position, id)
  for (const auto& [id, count_first] : seen) {
    const auto [count, first] = count_first;
    if (std::find(active.begin(), active.end(), id) != active.end()) continue;
    if (options.rule == QueryRule::kThreshold && count < options.min_count) continue;
    pool.emplace_back(options.rule == QueryRule::kUnion ? 0 : -count, first, id);
  }
  std::sort(pool.begin(), pool.end());
  for (const auto& candidate : pool) {
    if (static_cast<int64_t>(active.size()) == options.k) break;
    active.push_back(std::get<2>(candidate));
  }
  active.resize(options.k, -1);
  return active;
}

// Batches of 131,072 slots are counted in four parts (one per thread): the same set as the
// definition, for every rule, with and without labels, on any number of threads.
void TestQueryBatchWideInParts() {
  const TableShape shape{8, 64, 64};
  constexpr int64_t kNeurons = 3000, kBatch = 256;
  std::mt19937 rng(5);
  std::vector<int32_t> neuron_codes(kNeurons * shape.num_tables);
  for (int32_t& code : neuron_codes) code = static_cast<int32_t>(rng() % shape.num_buckets);
  const Tables t = Build(shape, neuron_codes, Overflow::kReservoir, 1);
  std::vector<int32_t> codes(kBatch * shape.num_tables), labels(kBatch * 2);
  for (int32_t& code : codes) code = static_cast<int32_t>(rng() % shape.num_buckets);
  for (int32_t& label : labels) {  // a tenth of them padding
    label = static_cast<int32_t>(rng() % (kNeurons + 300)) - 300;
    label = std::max(label, -1);
  }
  for (const QueryRule rule : {QueryRule::kFrequency, QueryRule::kUnion, QueryRule::kThreshold}) {
    for (const int64_t num_labels : {0, 2}) {
      for (const int64_t k : {1, 700, 2990, 3100}) {
        QueryOptions options;
        options.k = k;
        options.num_neurons = kNeurons;
        options.rule = rule;
        options.min_count = 60;
        options.batch_wide = true;
        const std::vector<int32_t> used_labels = num_labels ? labels : std::vector<int32_t>{};
        if (k < 500 && num_labels) continue;  // more labels than k
        const std::vector<int32_t> want = ReferenceBatchWide(shape, codes, t, used_labels, options);
        BatchQueryScratch scratch;
        for (const ParallelFor& parallel_for : {SerialFor(), OneByOneFor(), ThreadsFor(3)}) {
          std::vector<int32_t> active(k, -7);
          CHECK_TRUE(QueryTables(shape, kBatch, codes.data(), t.ids.data(), t.counts.data(),
                                 num_labels ? labels.data() : nullptr, num_labels, options,
                                 active.data(), parallel_for, &scratch)
                         .empty());
          CHECK_TRUE(active == want);
          for (const uint16_t count : scratch.neuron_counts) CHECK_TRUE(count == 0);
        }
      }
    }
  }
  // A bad id in a bucket is reported from any part.
  Tables bad = t;
  const int64_t bucket = 3 * shape.num_buckets + codes[kBatch * shape.num_tables - 5];
  bad.ids[bucket * shape.capacity] = kNeurons + 4;
  QueryOptions options;
  options.k = 100;
  options.num_neurons = kNeurons;
  options.batch_wide = true;
  std::vector<int32_t> active(100);
  const std::string error =
      QueryTables(shape, kBatch, codes.data(), bad.ids.data(), bad.counts.data(), nullptr, 0,
                  options, active.data(), ThreadsFor(2));
  CHECK_TRUE(error.find(std::to_string(kNeurons + 4)) != std::string::npos);
}

// Counts saturate instead of wrapping: id 1, in 80,000 slots, stays ahead of id 0, in 40,000.
void TestQueryBatchWideCountsSaturate() {
  const TableShape shape{2, 1, 2};
  const std::vector<int32_t> ids = {0, 1, 1, -1}, counts = {2, 1};
  constexpr int64_t kBatch = 40000;
  const std::vector<int32_t> codes(kBatch * shape.num_tables, 0);
  QueryOptions options;
  options.k = 2;
  options.num_neurons = 2;
  options.batch_wide = true;
  std::vector<int32_t> active(2);
  CHECK_TRUE(QueryTables(shape, kBatch, codes.data(), ids.data(), counts.data(), nullptr, 0,
                         options, active.data(), ThreadsFor(2))
                 .empty());
  CHECK_TRUE((active == std::vector<int32_t>{1, 0}));
}

void TestQueryBadTableId() {
  QueryFixture f;
  f.ids[(0 * 4 + 1) * 3 + 1] = 12;  // table 0, bucket 1, slot 1
  std::string error;
  f.Query({1, 2, 0}, Options(4), {}, 0, &error);
  CHECK_TRUE(error.find("table_ids") != std::string::npos);
  CHECK_TRUE(error.find("12") != std::string::npos);
  // A bucket the query does not meet is not read.
  f.Query({0, 0, 1}, Options(4), {}, 0, &error);
  CHECK_TRUE(error.empty());
}

void TestBuildThenQuery() {
  // The built tables answer a query with the neurons that share its buckets.
  const TableShape shape{2, 4, 8};
  const std::vector<int32_t> codes = {0, 1, 0, 2, 3, 1, 0, 1};  // 4 neurons, 2 tables
  const Tables t = Build(shape, codes, Overflow::kFifo, 0);
  QueryOptions options;
  options.k = 4;
  options.num_neurons = 4;
  const int32_t query[2] = {0, 1};  // table 0 bucket 0: {0, 1, 3}; table 1 bucket 1: {0, 2, 3}
  std::vector<int32_t> active(4);
  CHECK_TRUE(QueryTables(shape, 1, query, t.ids.data(), t.counts.data(), nullptr, 0, options,
                         active.data(), SerialFor())
                 .empty());
  CHECK_TRUE((active == std::vector<int32_t>{0, 3, 1, 2}));
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestExampleFromHeader();
  tf_lsh::TestBuildMatchesLoops();
  tf_lsh::TestFifoKeepsTheLast();
  tf_lsh::TestReservoir();
  tf_lsh::TestUpdateEqualsRebuild();
  tf_lsh::TestUpdateWithOverflow();
  tf_lsh::TestFindInvalidCode();
  tf_lsh::TestQueryRules();
  tf_lsh::TestQueryLabels();
  tf_lsh::TestQueryFillRandom();
  tf_lsh::TestQueryBatchWide();
  tf_lsh::TestQueryBatchWideKeptScratch();
  tf_lsh::TestQueryBatchWideInParts();
  tf_lsh::TestQueryBatchWideCountsSaturate();
  tf_lsh::TestQueryBadTableId();
  tf_lsh::TestBuildThenQuery();
  std::printf("PASS\n");
  return 0;
}
