#include "tf_lsh_ops/cc/core/lsh_hash.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <vector>

#include "tf_lsh_ops/cc/core/test_util.h"

namespace tf_lsh {
namespace {

// A ParallelFor that cuts the work into shards of one unit, to show results do not depend on
// sharding.
ParallelFor OneByOneFor() {
  return [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    for (int64_t i = 0; i < total; ++i) fn(i, i + 1);
  };
}

// A dense [batch, dim] matrix in CSR form (its nonzeros, in feature order).
struct Csr {
  std::vector<int64_t> row_offsets{0}, feature_ids;
  std::vector<float> values;
};

Csr ToCsr(const std::vector<float>& dense, int64_t batch, int64_t dim) {
  Csr csr;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t d = 0; d < dim; ++d) {
      if (dense[b * dim + d] == 0.f) continue;
      csr.feature_ids.push_back(d);
      csr.values.push_back(dense[b * dim + d]);
    }
    csr.row_offsets.push_back(static_cast<int64_t>(csr.values.size()));
  }
  return csr;
}

void TestExampleFromHeader() {
  float projections[4] = {1, -1,  // feature 0
                          1, 1};  // feature 1
  float x[2] = {1, 2};
  int32_t code = -1;
  SrpHashDense(LshShape{1, 2, 1, 2}, x, projections, MipsSide::kNone, 0.f, &code, SerialFor());
  CHECK_TRUE(code == 3);
}

void TestSrpByHand() {
  // 2 tables of 2 bits over 2 features: hashes 0, 1 form table 0, hashes 2, 3 table 1.
  const float projections[8] = {1, -1, 3, -3,  // feature 0
                                1, 1, -1, 1};  // feature 1
  const float x[6] = {1, 2,       // <x, p> = 3, 1, 1, -1   -> codes 0b11, 0b01
                      -1, 0.5f,   // <x, p> = -0.5, 1.5, -3.5, 3.5 -> codes 0b10, 0b10
                      0, 0};      // all 0: a zero projection is bit 0 -> codes 0, 0
  int32_t codes[6];
  SrpHashDense(LshShape{3, 2, 2, 2}, x, projections, MipsSide::kNone, 0.f, codes, SerialFor());
  const int32_t want[6] = {3, 1, 2, 2, 0, 0};
  for (int i = 0; i < 6; ++i) CHECK_TRUE(codes[i] == want[i]);

  // A projection of exactly 0 gives bit 0: <(1, 1), (1, -1)> = 0.
  const float tie_projections[2] = {1, -1};
  const float tie_x[2] = {1, 1};
  int32_t tie_code = -1;
  SrpHashDense(LshShape{1, 2, 1, 1}, tie_x, tie_projections, MipsSide::kNone, 0.f, &tie_code,
               SerialFor());
  CHECK_TRUE(tie_code == 0);
}

void TestSrpMipsByHand() {
  // dim 2, one table of 2 bits; row 2 is the MIPS row.
  const float projections[6] = {1, 1,      // feature 0
                                1, -1,     // feature 1
                                -2, 0.5f};  // the extra coordinate
  const float x[2] = {1, 1};
  // Data side, M = 2: x / M = (0.5, 0.5), extra = sqrt(1 - 0.5) = 0.7071.
  //   hash 0: 0.5 + 0.5 - 2 * 0.7071 < 0 -> 0;  hash 1: 0.5 - 0.5 + 0.5 * 0.7071 > 0 -> 1.
  int32_t code = -1;
  SrpHashDense(LshShape{1, 2, 1, 2}, x, projections, MipsSide::kData, 2.f, &code, SerialFor());
  CHECK_TRUE(code == 2);
  // Query side: [x, 0]: hash 0: 2 > 0 -> 1; hash 1: 0 -> 0.
  SrpHashDense(LshShape{1, 2, 1, 2}, x, projections, MipsSide::kQuery, 0.f, &code, SerialFor());
  CHECK_TRUE(code == 1);
  // No MIPS: the same as the query side (the extra row is never read).
  SrpHashDense(LshShape{1, 2, 1, 2}, x, projections, MipsSide::kNone, 0.f, &code, SerialFor());
  CHECK_TRUE(code == 1);
  // A vector of norm M gets extra coordinate 0: x = (2, 0), M = 2 -> (1, 0, 0): bits 1, 1.
  const float on_sphere[2] = {2, 0};
  SrpHashDense(LshShape{1, 2, 1, 2}, on_sphere, projections, MipsSide::kData, 2.f, &code,
               SerialFor());
  CHECK_TRUE(code == 3);
  // The same through the sparse path.
  const int64_t offsets[2] = {0, 2}, features[2] = {0, 1};
  SrpHashSparse(LshShape{1, 2, 1, 2}, offsets, features, x, projections, MipsSide::kData, 2.f,
                &code, SerialFor());
  CHECK_TRUE(code == 2);
  SrpHashSparse(LshShape{1, 2, 1, 2}, offsets, features, x, projections, MipsSide::kQuery, 0.f,
                &code, SerialFor());
  CHECK_TRUE(code == 1);
}

void TestSrpSparseRepeatedFeaturesAreSummed() {
  // Sparse (0, 1) + (0, 1) stands for the dense vector (2, 0); with M = 2 it lies on the sphere,
  // so the MIPS coordinate is 0 and only feature 0 counts: 2 / 2 * 1 > 0 -> bit 1. Summing
  // squares per entry instead (1 + 1 = 2, not 4) would give sqrt(0.5) * -5 and bit 0.
  const float projections[3] = {1, 0, -5};  // features 0, 1, then the MIPS row (H = 1)
  const float dense[2] = {2, 0};
  const int64_t offsets[2] = {0, 2}, features[2] = {0, 0};
  const float values[2] = {1, 1};
  int32_t dense_code = -1, sparse_code = -1;
  SrpHashDense(LshShape{1, 2, 1, 1}, dense, projections, MipsSide::kData, 2.f, &dense_code,
               SerialFor());
  SrpHashSparse(LshShape{1, 2, 1, 1}, offsets, features, values, projections, MipsSide::kData,
                2.f, &sparse_code, SerialFor());
  CHECK_TRUE(dense_code == 1);
  CHECK_TRUE(sparse_code == dense_code);
}

void TestWtaByHand() {
  // bin_size 4 (2 bits per hash), 1 table of 2 hashes.
  const int32_t bins[8] = {0, 1, 2, 3, 3, 2, 1, 0};
  const float x[4] = {1, 2, 9, 3};
  int32_t code = -1;
  // hash 0 sees (1, 2, 9, 3): position 2; hash 1 sees (3, 9, 2, 1): position 1.
  WtaHashDense(LshShape{1, 4, 1, 2}, x, bins, 4, false, &code, SerialFor());
  CHECK_TRUE(code == (2 | 1 << 2));
  WtaHashDense(LshShape{1, 4, 1, 2}, x, bins, 4, true, &code, SerialFor());
  CHECK_TRUE(code == (2 | 1 << 2));

  // bin_size 2: ties go to the first position; negative values compare as numbers.
  const int32_t pairs[4] = {0, 1, 2, 3};
  const float ties[4] = {2, 2, 1, 1};
  WtaHashDense(LshShape{1, 4, 1, 2}, ties, pairs, 2, false, &code, SerialFor());
  CHECK_TRUE(code == 0);
  const float negative[4] = {-1, -2, -3, -0.5f};
  WtaHashDense(LshShape{1, 4, 1, 2}, negative, pairs, 2, false, &code, SerialFor());
  CHECK_TRUE(code == (0 | 1 << 1));
  WtaHashDense(LshShape{1, 4, 1, 2}, negative, pairs, 2, true, &code, SerialFor());
  CHECK_TRUE(code == (0 | 1 << 1));

  // WTA lets a zero win over a negative value; DWTA ignores zeros.
  const float with_zero[4] = {-1, 0, 0, 4};
  WtaHashDense(LshShape{1, 4, 1, 2}, with_zero, pairs, 2, false, &code, SerialFor());
  CHECK_TRUE(code == (1 | 1 << 1));
  WtaHashDense(LshShape{1, 4, 1, 2}, with_zero, pairs, 2, true, &code, SerialFor());
  CHECK_TRUE(code == (0 | 1 << 1));
}

void TestDwtaDensification() {
  // 2 tables of 2 hashes, bin_size 2 over 8 features; bins {0,1} {2,3} {4,5} {6,7}.
  const int32_t bins[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  // Nonzeros at features 1 and 7: hash 0 and hash 3 have winner 1, hashes 1 and 2 are empty.
  float x[8] = {0, 1, 0, 0, 0, 0, 0, 2};
  int32_t codes[2] = {-1, -1};
  // WTA: empty bins pick position 0 (all zeros tie).
  WtaHashDense(LshShape{1, 8, 2, 2}, x, bins, 2, false, codes, SerialFor());
  CHECK_TRUE(codes[0] == 1 && codes[1] == 2);
  // DWTA: the empty bins borrow a non-empty bin's winner, which is 1 in both.
  WtaHashDense(LshShape{1, 8, 2, 2}, x, bins, 2, true, codes, SerialFor());
  CHECK_TRUE(codes[0] == 3 && codes[1] == 3);

  // Winners 1 (hash 0) and 0 (hash 3): every empty bin borrows one of them.
  x[7] = 0;
  x[6] = 5;
  WtaHashDense(LshShape{1, 8, 2, 2}, x, bins, 2, true, codes, SerialFor());
  CHECK_TRUE((codes[0] & 1) == 1 && (codes[1] >> 1) == 0);

  // All zero: code 0 in every table, no crash.
  const float zeros[8] = {};
  codes[0] = codes[1] = -1;
  WtaHashDense(LshShape{1, 8, 2, 2}, zeros, bins, 2, true, codes, SerialFor());
  CHECK_TRUE(codes[0] == 0 && codes[1] == 0);
  const int64_t offsets[2] = {0, 0};
  codes[0] = codes[1] = -1;
  WtaHashSparse(LshShape{1, 8, 2, 2}, offsets, nullptr, nullptr, bins, 2, true, codes,
                SerialFor());
  CHECK_TRUE(codes[0] == 0 && codes[1] == 0);

  // Every bin empty but one, with many hashes: all borrow its winner.
  const int64_t total = 64;
  std::vector<int32_t> many_bins(total * 2);
  for (int64_t i = 0; i < total * 2; ++i) many_bins[i] = static_cast<int32_t>(i % 4);
  const float one_hot[4] = {0, 3, 0, 0};  // bins over {0, 1} win at 1; bins over {2, 3} empty
  std::vector<int32_t> many_codes(total);
  WtaHashDense(LshShape{1, 4, total, 1}, one_hot, many_bins.data(), 2, true, many_codes.data(),
               SerialFor());
  for (int32_t c : many_codes) CHECK_TRUE(c == 1);
}

void TestSparseMatchesDense() {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform;
  const int64_t batch = 23, dim = 37, tables = 5, hashes = 4, bin_size = 8;
  const LshShape shape{batch, dim, tables, hashes};
  std::vector<float> x(batch * dim);
  for (int64_t i = 0; i < batch * dim; ++i) x[i] = uniform(rng) < 0.7f ? 0.f : normal(rng);
  for (int64_t d = 0; d < dim; ++d) x[3 * dim + d] = 0.f;  // an all-zero row
  x[4 * dim + 5] = 1.f;                                     // a single nonzero
  for (int64_t d = 0; d < 5; ++d) x[4 * dim + d] = 0.f;
  const Csr csr = ToCsr(x, batch, dim);

  std::vector<float> gaussian((dim + 1) * shape.total_hashes()), signs(gaussian.size());
  MakeSrpProjections(dim + 1, shape.total_hashes(), 1.0, 5, gaussian.data());
  MakeSrpProjections(dim + 1, shape.total_hashes(), 1.0 / 3, 5, signs.data());
  std::vector<int32_t> dense_codes(batch * tables), sparse_codes(batch * tables);
  for (const std::vector<float>* projections : {&gaussian, &signs}) {
    for (MipsSide mips : {MipsSide::kNone, MipsSide::kData, MipsSide::kQuery}) {
      SrpHashDense(shape, x.data(), projections->data(), mips, 4.f, dense_codes.data(),
                   SerialFor());
      SrpHashSparse(shape, csr.row_offsets.data(), csr.feature_ids.data(), csr.values.data(),
                    projections->data(), mips, 4.f, sparse_codes.data(), OneByOneFor());
      CHECK_TRUE(dense_codes == sparse_codes);
      for (int32_t c : dense_codes) CHECK_TRUE(c >= 0 && c < (1 << hashes));
    }
  }

  std::vector<int32_t> bins(shape.total_hashes() * bin_size);
  MakeWtaBins(dim, shape.total_hashes(), bin_size, 9, bins.data());
  for (bool densified : {false, true}) {
    WtaHashDense(shape, x.data(), bins.data(), bin_size, densified, dense_codes.data(),
                 SerialFor());
    WtaHashSparse(shape, csr.row_offsets.data(), csr.feature_ids.data(), csr.values.data(),
                  bins.data(), bin_size, densified, sparse_codes.data(), OneByOneFor());
    CHECK_TRUE(dense_codes == sparse_codes);
    for (int32_t c : dense_codes) CHECK_TRUE(c >= 0 && c < (1 << (hashes * 3)));
    // All-zero row: code 0 under DWTA.
    if (densified) {
      for (int64_t l = 0; l < tables; ++l) CHECK_TRUE(dense_codes[3 * tables + l] == 0);
    }
  }

  // Sparse rows with repeated features (summed) and explicit zeros, in a shuffled order.
  const int64_t offsets[3] = {0, 4, 6};
  const int64_t features[6] = {7, 2, 7, 30, 1, 1};
  const float values[6] = {0.5f, -1.5f, 0.25f, 0.f, 2.f, -2.f};  // row 1 sums to zero
  std::vector<float> summed(2 * dim, 0.f);
  summed[7] = 0.75f;
  summed[2] = -1.5f;
  const LshShape two{2, dim, tables, hashes};
  std::vector<int32_t> a(2 * tables), b(2 * tables);
  for (bool densified : {false, true}) {
    WtaHashDense(two, summed.data(), bins.data(), bin_size, densified, a.data(), SerialFor());
    WtaHashSparse(two, offsets, features, values, bins.data(), bin_size, densified, b.data(),
                  SerialFor());
    CHECK_TRUE(a == b);
  }
}

void TestMakeWtaBins() {
  const int64_t dim = 10, total = 7, bin_size = 4;
  std::vector<int32_t> bins(total * bin_size), again(bins.size()), other(bins.size());
  MakeWtaBins(dim, total, bin_size, 3, bins.data());
  MakeWtaBins(dim, total, bin_size, 3, again.data());
  MakeWtaBins(dim, total, bin_size, 4, other.data());
  CHECK_TRUE(bins == again);
  CHECK_TRUE(bins != other);
  // Every full run of dim entries is a permutation of 0..dim-1, so every coordinate is used.
  for (int64_t start = 0; start + dim <= total * bin_size; start += dim) {
    std::set<int32_t> run(bins.begin() + start, bins.begin() + start + dim);
    CHECK_TRUE(static_cast<int64_t>(run.size()) == dim);
    CHECK_TRUE(*run.begin() == 0 && *run.rbegin() == dim - 1);
  }
  for (int32_t c : bins) CHECK_TRUE(c >= 0 && c < dim);
  // bin_size == dim: each bin is a permutation.
  std::vector<int32_t> full(3 * 8);
  MakeWtaBins(8, 3, 8, 1, full.data());
  for (int64_t h = 0; h < 3; ++h) {
    CHECK_TRUE(std::set<int32_t>(full.begin() + h * 8, full.begin() + h * 8 + 8).size() == 8);
  }
}

void TestMakeSrpProjections() {
  const int64_t dim = 50, total = 200;
  std::vector<float> p(dim * total), again(p.size()), other(p.size());
  MakeSrpProjections(dim, total, 1.0, 7, p.data());
  MakeSrpProjections(dim, total, 1.0, 7, again.data());
  MakeSrpProjections(dim, total, 1.0, 8, other.data());
  CHECK_TRUE(p == again);
  CHECK_TRUE(p != other);
  double sum = 0, squares = 0;
  for (float v : p) {
    sum += v;
    squares += v * v;
  }
  CHECK_NEAR(sum / p.size(), 0.0, 0.05);
  CHECK_NEAR(squares / p.size(), 1.0, 0.05);

  MakeSrpProjections(dim, total, 0.25, 7, p.data());
  MakeSrpProjections(dim, total, 0.25, 7, again.data());
  CHECK_TRUE(p == again);
  int64_t plus = 0, minus = 0;
  for (float v : p) {
    CHECK_TRUE(v == 1.f || v == -1.f || v == 0.f);
    plus += v == 1.f;
    minus += v == -1.f;
  }
  CHECK_NEAR(static_cast<double>(plus + minus) / p.size(), 0.25, 0.02);
  CHECK_NEAR(static_cast<double>(plus) / (plus + minus), 0.5, 0.04);
}

void TestWtaHashBits() {
  CHECK_TRUE(WtaHashBits(2) == 1);
  CHECK_TRUE(WtaHashBits(8) == 3);
  CHECK_TRUE(WtaHashBits(16) == 4);
  CHECK_TRUE(WtaHashBits(1024) == 10);
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestExampleFromHeader();
  tf_lsh::TestSrpByHand();
  tf_lsh::TestSrpMipsByHand();
  tf_lsh::TestSrpSparseRepeatedFeaturesAreSummed();
  tf_lsh::TestWtaByHand();
  tf_lsh::TestDwtaDensification();
  tf_lsh::TestSparseMatchesDense();
  tf_lsh::TestMakeWtaBins();
  tf_lsh::TestMakeSrpProjections();
  tf_lsh::TestWtaHashBits();
  std::printf("PASS\n");
  return 0;
}
