#include "tf_lsh_ops/cc/core/row_fingerprints.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <vector>

#include "tf_lsh_ops/cc/core/test_util.h"

namespace tf_lsh {
namespace {

std::vector<uint64_t> Fingerprints(const std::vector<float>& rows, int64_t dim) {
  const int64_t num_rows = dim == 0 ? 0 : static_cast<int64_t>(rows.size()) / dim;
  std::vector<uint64_t> out(num_rows);
  RowFingerprints(rows.data(), num_rows, dim, out.data(), SerialFor());
  return out;
}

// Splits the rows into shards of one to three rows, as a thread pool might.
ParallelFor RaggedFor() {
  return [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    for (int64_t begin = 0, step = 1; begin < total; begin += step, step = step % 3 + 1) {
      fn(begin, std::min(total, begin + step));
    }
  };
}

void TestEqualRowsAgreeAndChangedRowsDiffer() {
  // Widths around the 16-float block: full blocks only, a tail, a tail only.
  for (int64_t dim : {1, 3, 15, 16, 17, 128, 131}) {
    std::mt19937 gen(static_cast<uint32_t>(dim));
    std::normal_distribution<float> normal;
    const int64_t num_rows = 40;
    std::vector<float> rows(num_rows * dim);
    for (float& v : rows) v = normal(gen);
    // Row 1 repeats row 0.
    std::copy(rows.begin(), rows.begin() + dim, rows.begin() + dim);
    const std::vector<uint64_t> before = Fingerprints(rows, dim);
    CHECK_TRUE(before[0] == before[1]);
    CHECK_TRUE(before[0] == RowFingerprint(rows.data(), dim));
    CHECK_TRUE(std::set<uint64_t>(before.begin() + 1, before.end()).size() == num_rows - 1);

    // Flipping any one bit of one row changes that row's fingerprint and no other.
    for (int64_t trial = 0; trial < 200; ++trial) {
      const int64_t row = trial % num_rows, col = (trial * 7) % dim;
      const int bit = static_cast<int>(trial % 32);
      std::vector<float> changed = rows;
      uint32_t bits;
      std::memcpy(&bits, &changed[row * dim + col], 4);
      bits ^= uint32_t{1} << bit;
      std::memcpy(&changed[row * dim + col], &bits, 4);
      const std::vector<uint64_t> after = Fingerprints(changed, dim);
      for (int64_t r = 0; r < num_rows; ++r) CHECK_TRUE((after[r] != before[r]) == (r == row));
    }

    // Any sharding gives the same values.
    std::vector<uint64_t> sharded(num_rows);
    RowFingerprints(rows.data(), num_rows, dim, sharded.data(), RaggedFor());
    CHECK_TRUE(sharded == before);
  }
}

void TestBitPatternsNotValues() {
  // 0.0 and -0.0 compare equal as floats but are different weights' bytes; so are two NaNs.
  const float zeros[4] = {0.f, 0.f, 0.f, 0.f};
  const float negative_zero[4] = {0.f, -0.f, 0.f, 0.f};
  CHECK_TRUE(RowFingerprint(zeros, 4) != RowFingerprint(negative_zero, 4));
  // The width is part of the fingerprint: a zero row of 3 differs from one of 4.
  CHECK_TRUE(RowFingerprint(zeros, 3) != RowFingerprint(zeros, 4));
}

void TestFixedValues() {
  // Fingerprints are stored in checkpoints: they must not change between builds or machines.
  const float row[5] = {1.f, -2.5f, 0.f, 3.25f, 1e-3f};
  const uint64_t value = RowFingerprint(row, 5);
  CHECK_TRUE(value == 0xf0507aac950150bdull);
}

void TestEmpty() {
  std::vector<uint64_t> none;
  RowFingerprints(nullptr, 0, 8, none.data(), SerialFor());
  const uint64_t a = RowFingerprint(nullptr, 0), b = RowFingerprint(nullptr, 0);
  CHECK_TRUE(a == b);
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestEqualRowsAgreeAndChangedRowsDiffer();
  tf_lsh::TestBitPatternsNotValues();
  tf_lsh::TestFixedValues();
  tf_lsh::TestEmpty();
  std::printf("PASS\n");
  return 0;
}
