// Times the batch-wide table query on the Amazon-670K output layer's shape (670,091 neurons,
// 16 tables of 4,096 buckets of 128, a batch of 128 with 5 labels each, k = 3,000), over 16
// batches in turn, without TensorFlow:
//   bazel run -c opt //tf_lsh_ops:lsh_tables_bench -- [threads]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "tf_lsh_ops/cc/core/bench_util.h"
#include "tf_lsh_ops/cc/core/lsh_tables.h"

namespace tf_lsh {
namespace {

void Run(int threads) {
  constexpr int64_t kNeurons = 670091, kBatch = 128, kLabels = 5, kActive = 3000;
  const TableShape shape{16, int64_t{1} << 12, 128};
  std::mt19937 rng(0);
  std::vector<int32_t> neuron_codes(kNeurons * shape.num_tables);
  for (int32_t& code : neuron_codes) code = static_cast<int32_t>(rng() % shape.num_buckets);
  std::vector<int32_t> ids(shape.num_tables * shape.num_buckets * shape.capacity);
  std::vector<int32_t> counts(shape.num_tables * shape.num_buckets);
  BuildTables(shape, kNeurons, neuron_codes.data(), Overflow::kReservoir, 0, ids.data(),
              counts.data(), ThreadsFor(threads));
  // Batches of query codes and labels, in turn (as a dataset goes).
  constexpr int kBatches = 16;
  std::vector<std::vector<int32_t>> codes(kBatches), labels(kBatches);
  for (int b = 0; b < kBatches; ++b) {
    codes[b].resize(kBatch * shape.num_tables);
    labels[b].resize(kBatch * kLabels);
    for (int32_t& code : codes[b]) code = static_cast<int32_t>(rng() % shape.num_buckets);
    for (int32_t& label : labels[b]) label = static_cast<int32_t>(rng() % kNeurons);
  }
  QueryOptions options;
  options.k = kActive;
  options.num_neurons = kNeurons;
  options.fill_random = true;
  options.batch_wide = true;
  std::vector<int32_t> active(kActive);
  BatchQueryScratch scratch;  // kept from query to query, as the op kernel keeps it
  const ParallelFor parallel_for = ThreadsFor(threads);
  int64_t checksum = 0, query = 0;
  const auto next_query = [&] {
    const int b = query++ % kBatches;
    QueryTables(shape, kBatch, codes[b].data(), ids.data(), counts.data(), labels[b].data(),
                kLabels, options, active.data(), parallel_for, &scratch);
  };
  for (int b = 0; b < kBatches; ++b) {
    next_query();
    for (const int32_t id : active) checksum += id;
  }
  std::printf("{\"threads\": %d, \"batch_wide_query_ms\": %.3f, \"checksum\": %ld}\n", threads,
              MedianMs(next_query, 10 * kBatches), static_cast<long>(checksum));
}

}  // namespace
}  // namespace tf_lsh

int main(int argc, char** argv) {
  tf_lsh::Run(argc > 1 ? std::atoi(argv[1]) : 2);
  return 0;
}
