#include "tf_lsh_ops/cc/core/matmul_top_k.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "tf_lsh_ops/cc/core/test_util.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct Problem {
  int64_t batch, dim, units;
  std::vector<float> queries, keys, biases;
};

// score(b, u) with the op's arithmetic: the products summed in order of depth (fused
// multiply-adds on the AVX2 path, a rounded product then a rounded sum on the portable one),
// then the bias. The test builds without -mfma, so `sum + q * x` is never contracted.
float Score(const Problem& p, int64_t b, int64_t u) {
  const bool fused = UsesAvx2();
  float sum = 0.f;
  for (int64_t d = 0; d < p.dim; ++d) {
    const float q = p.queries[b * p.dim + d], x = p.keys[u * p.dim + d];
    sum = fused ? std::fma(q, x, sum) : sum + q * x;
  }
  return sum + p.biases[u];
}

// Brute force: every score, NaN as -inf, then a full sort by (score desc, id asc).
std::vector<int32_t> Reference(const Problem& p, int64_t k) {
  std::vector<int32_t> ids(p.batch * k);
  std::vector<std::pair<float, int32_t>> row(p.units);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t u = 0; u < p.units; ++u) {
      const float score = Score(p, b, u);
      row[u] = {std::isnan(score) ? -kInf : score, static_cast<int32_t>(u)};
    }
    std::sort(row.begin(), row.end(), [](const auto& x, const auto& y) {
      return x.first > y.first || (x.first == y.first && x.second < y.second);
    });
    for (int64_t i = 0; i < k; ++i) ids[b * k + i] = row[i].second;
  }
  return ids;
}

std::vector<int32_t> Run(const Problem& p, int64_t k, const ParallelFor& parallel_for,
                         const MatmulTopKSplit& split = {}) {
  std::vector<int32_t> ids(p.batch * k, -7);
  MatmulTopK(p.batch, p.dim, p.units, k, p.queries.data(), p.keys.data(), p.biases.data(),
             ids.data(), parallel_for, split);
  return ids;
}

// Splits that reach every path: the default; chunks of 16 (the first k units then span several
// chunks) and shards of few units (merged); odd chunks, many shards and row groups of several
// blocks; one task and one chunk.
std::vector<MatmulTopKSplit> Splits() {
  return {MatmulTopKSplit{},
          MatmulTopKSplit{/*chunk_units=*/16, /*min_shard_units=*/1, /*target_tasks=*/8},
          MatmulTopKSplit{/*chunk_units=*/7, /*min_shard_units=*/1, /*target_tasks=*/64},
          MatmulTopKSplit{/*chunk_units=*/100000, /*min_shard_units=*/1 << 30,
                          /*target_tasks=*/1}};
}

// Every split, serially and in reversed shards of 3 tasks, gives the reference's ids.
void CheckAllSplits(const Problem& p, int64_t k) {
  const std::vector<int32_t> want = Reference(p, k);
  for (const MatmulTopKSplit& split : Splits()) {
    for (const ParallelFor& parallel_for : {SerialFor(), ReversedShards()}) {
      const std::vector<int32_t> got = Run(p, k, parallel_for, split);
      if (got != want) {
        std::fprintf(stderr, "batch %ld dim %ld units %ld k %ld chunk %ld shard %ld tasks %ld\n",
                     static_cast<long>(p.batch), static_cast<long>(p.dim),
                     static_cast<long>(p.units), static_cast<long>(k),
                     static_cast<long>(split.chunk_units),
                     static_cast<long>(split.min_shard_units),
                     static_cast<long>(split.target_tasks));
      }
      CHECK_TRUE(got == want);
    }
  }
}

Problem RandomProblem(int64_t batch, int64_t dim, int64_t units, std::mt19937* rng) {
  Problem p{batch, dim, units, std::vector<float>(batch * dim), std::vector<float>(units * dim),
            std::vector<float>(units)};
  std::normal_distribution<float> normal(0.f, 1.f);
  FillNormal(&normal, rng, {&p.queries, &p.keys, &p.biases});
  return p;
}

// Small integers: every score is exact and most units tie with many others.
Problem IntegerProblem(int64_t batch, int64_t dim, int64_t units, std::mt19937* rng) {
  Problem p = RandomProblem(batch, dim, units, rng);
  std::uniform_int_distribution<int> small(-2, 2);
  for (std::vector<float>* v : {&p.queries, &p.keys, &p.biases}) {
    for (float& x : *v) x = static_cast<float>(small(*rng));
  }
  return p;
}

void TestExampleFromHeader() {
  const float queries[2] = {1.f, 0.f}, keys[6] = {0.f, 1.f, 2.f, 0.f, 1.f, 0.f};
  const float biases[3] = {0.f, 0.f, 1.f};
  int32_t ids[2] = {-1, -1};
  MatmulTopK(1, 2, 3, 2, queries, keys, biases, ids, SerialFor());
  CHECK_TRUE(ids[0] == 1 && ids[1] == 2);
}

// Real-valued scores against the brute force with the same rounding, exactly.
void TestRandomAgainstBruteForce() {
  std::mt19937 rng(11);
  struct Case {
    int64_t batch, dim, units, k;
  };
  const Case cases[] = {
      {1, 32, 1000, 50},    // one row: parallel over unit shards only
      {7, 5, 333, 1},       // k = 1, units not a multiple of any chunk
      {5, 3, 37, 37},       // k = units: the full order
      {30, 32, 1111, 200},  // more rows than one block (16)
      {70, 6, 2000, 20},    // blocks of 16 rows and a partial one
      {3, 300, 517, 10},    // depth beyond MatMul's depth block (256)
      {2, 16, 20000, 40},   // default split with several shards
      {4, 8, 9000, 3000},   // large k
      {9, 1, 64, 63},
      {2, 4, 70000, 300},   // ids past 2^16: an odd number of radix passes
  };
  for (const Case& c : cases) CheckAllSplits(RandomProblem(c.batch, c.dim, c.units, &rng), c.k);
}

// Integer scores: ties everywhere, which must go to the lower id across chunks and shards.
void TestTiesGoToLowerIds() {
  std::mt19937 rng(12);
  for (int64_t k : {1, 5, 64, 300}) CheckAllSplits(IntegerProblem(6, 4, 301, &rng), k);
  CheckAllSplits(IntegerProblem(1, 2, 5000, &rng), 17);
  // Duplicated key rows and biases with real values: equal scores, so the result must be the
  // lower of each pair first. Units 2u and 2u + 1 are copies.
  Problem p = RandomProblem(3, 7, 400, &rng);
  for (int64_t u = 1; u < p.units; u += 2) {
    std::copy(p.keys.begin() + (u - 1) * p.dim, p.keys.begin() + u * p.dim,
              p.keys.begin() + u * p.dim);
    p.biases[u] = p.biases[u - 1];
  }
  const std::vector<int32_t> ids = Run(p, 40, SerialFor());
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t i = 0; i < 40; i += 2) {  // both copies, even one first
      CHECK_TRUE(ids[b * 40 + i] % 2 == 0 && ids[b * 40 + i + 1] == ids[b * 40 + i] + 1);
    }
  }
  CheckAllSplits(p, 40);
  // All scores equal: ids 0 .. k - 1 in order.
  Problem flat = IntegerProblem(2, 3, 700, &rng);
  std::fill(flat.queries.begin(), flat.queries.end(), 0.f);
  std::fill(flat.biases.begin(), flat.biases.end(), 0.5f);
  std::vector<int32_t> want(2 * 90);
  for (int64_t i = 0; i < 180; ++i) want[i] = static_cast<int32_t>(i % 90);
  CHECK_TRUE(Run(flat, 90, ReversedShards(), Splits()[1]) == want);
}

// NaN scores rank as -inf: after every number, interleaved with -inf by id. +inf ranks first.
void TestNanAndInfinities() {
  std::mt19937 rng(13);
  Problem p = RandomProblem(3, 4, 250, &rng);
  for (int64_t u = 0; u < p.units; u += 7) p.biases[u] = std::nanf("");
  for (int64_t u = 3; u < p.units; u += 11) p.biases[u] = -kInf;
  p.biases[100] = kInf;
  p.keys[50 * p.dim] = std::nanf("");  // unit 50 scores NaN for every row
  for (int64_t k : {1, 20, 200, 250}) CheckAllSplits(p, k);
  const std::vector<int32_t> all = Run(p, 250, SerialFor());
  CHECK_TRUE(all[0] == 100);
  // The last entries are the NaN and -inf units, in increasing id order.
  std::vector<int32_t> bottom;
  for (int64_t u = 0; u < p.units; ++u) {
    if (std::isnan(p.biases[u]) || p.biases[u] == -kInf || u == 50) {
      bottom.push_back(static_cast<int32_t>(u));
    }
  }
  CHECK_TRUE(std::equal(bottom.begin(), bottom.end(), all.end() - bottom.size()));
  // Every score NaN: ids 0 .. k - 1.
  std::fill(p.biases.begin(), p.biases.end(), std::nanf(""));
  const std::vector<int32_t> nan_ids = Run(p, 30, ReversedShards(), Splits()[2]);
  for (int64_t i = 0; i < 30; ++i) CHECK_TRUE(nan_ids[i] == i && nan_ids[60 + i] == i);
}

// dim = 0: every product is 0, so the order is the biases'; batch = 0 writes nothing.
void TestEmptyDimensions() {
  std::mt19937 rng(14);
  Problem p = RandomProblem(4, 0, 90, &rng);
  CheckAllSplits(p, 12);
  std::vector<int32_t> order(90);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return p.biases[a] > p.biases[b]; });
  const std::vector<int32_t> ids = Run(p, 12, SerialFor());
  for (int64_t i = 0; i < 12; ++i) CHECK_TRUE(ids[3 * 12 + i] == order[i]);
  // -0 ties with +0: lower ids first, as the float comparison has it.
  for (int64_t u = 0; u < p.units; ++u) p.biases[u] = u % 3 == 1 ? -0.f : 0.f;
  std::vector<int32_t> in_order(4 * 90);
  for (int64_t i = 0; i < 4 * 90; ++i) in_order[i] = static_cast<int32_t>(i % 90);
  CHECK_TRUE(Run(p, 90, SerialFor()) == in_order);
  int32_t untouched = -7;
  MatmulTopK(0, 3, 5, 2, nullptr, p.keys.data(), p.biases.data(), &untouched, SerialFor());
  CHECK_TRUE(untouched == -7);
}

// Scores a rounding apart are ordered as the op rounds them, whatever the split: near-ties are
// dense here (many units, two dimensions, tiny biases), and the reference rounds as the op.
void TestNearTies() {
  std::mt19937 rng(15);
  Problem p = RandomProblem(8, 2, 6000, &rng);
  for (float& b : p.biases) b *= 1e-3f;
  CheckAllSplits(p, 100);
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestExampleFromHeader();
  tf_lsh::TestRandomAgainstBruteForce();
  tf_lsh::TestTiesGoToLowerIds();
  tf_lsh::TestNanAndInfinities();
  tf_lsh::TestEmptyDimensions();
  tf_lsh::TestNearTies();
  std::printf("matmul_top_k_test passed (%s)\n", tf_lsh::UsesAvx2() ? "avx2" : "portable");
  return 0;
}
