#include "tf_lsh_ops/cc/core/row_groups.h"

#include <algorithm>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "tf_lsh_ops/cc/core/test_util.h"

namespace tf_lsh {
namespace {

// The example in row_groups.h.
void TestExampleFromHeader() {
  int32_t ids[4] = {2, -1, 0, 2};
  const ActiveRows rows(ids, 4);
  CHECK_TRUE((rows.ids() == std::vector<int32_t>{0, 2}));
  CHECK_TRUE((rows.offsets() == std::vector<int32_t>{0, 1, 3}));
  CHECK_TRUE((rows.positions() == std::vector<int32_t>{2, 0, 3}));
}

// The grouping of a [3, 5] index matrix (row_groups.h) and the checks of indices and groupings.
void TestSmallGrouping() {
  const int64_t num_neurons = 9;
  // Duplicates within a row (4, 4), across rows (4, 0) and padding (-1).
  std::vector<int32_t> ids = {4, 4, 0, -1, 8, 0, 1, 2, 3, 4, -1, -1, -1, -1, -1};
  CHECK_TRUE(FindInvalidIndex(ids.data(), ids.size(), num_neurons) == -1);
  std::vector<int32_t> bad = {0, 9};
  CHECK_TRUE(FindInvalidIndex(bad.data(), 2, num_neurons) == 1);

  const ActiveRows rows(ids.data(), ids.size());
  CHECK_TRUE((rows.ids() == std::vector<int32_t>{0, 1, 2, 3, 4, 8}));
  CHECK_TRUE((rows.offsets() == std::vector<int32_t>{0, 2, 3, 4, 5, 8, 9}));
  CHECK_TRUE(CheckRowGroups(rows.view(), 9, num_neurons, ids.size()).empty());
  CHECK_TRUE(!CheckRowGroups(rows.view(), 9, 5, ids.size()).empty());  // id 8 >= 5
  CHECK_TRUE(!CheckRowGroups(rows.view(), 9, num_neurons, 4).empty());  // positions
}

// Against a stable sort, on both ways of grouping: many chunks and three radix passes (ids up
// to 2^21, few entries per neuron), and blocks of neurons counted in cache (many entries per
// neuron; 4,097 neurons end in a block of one).
void TestGroupRowsAgainstSort() {
  for (const int32_t num_neurons : {1 << 21, 70000, 4097}) {
    std::mt19937 rng(3);
    std::uniform_int_distribution<int32_t> id(-1, num_neurons - 1);
    std::vector<int32_t> indices(300000);
    for (auto& v : indices) v = id(rng) % 4 == 0 ? -1 : id(rng);
    indices[7] = num_neurons - 1;
    std::vector<std::pair<int32_t, int32_t>> want;
    for (size_t i = 0; i < indices.size(); ++i) {
      if (indices[i] >= 0) want.emplace_back(indices[i], static_cast<int32_t>(i));
    }
    std::stable_sort(want.begin(), want.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const ParallelFor& parallel_for : {SerialFor(), ReversedShards()}) {
      const ActiveRows rows(indices.data(), indices.size(), parallel_for, num_neurons);
      CHECK_TRUE(rows.positions().size() == want.size());
      CHECK_TRUE(CheckRowGroups(rows.view(), want.size(), num_neurons, indices.size()).empty());
      for (int64_t r = 0; r < rows.size(); ++r) {
        for (int32_t j = rows.offsets()[r]; j < rows.offsets()[r + 1]; ++j) {
          CHECK_TRUE(want[j].first == rows.ids()[r] && want[j].second == rows.positions()[j]);
        }
      }
    }
  }
  // Nothing to group: no rows, one offset.
  const std::vector<int32_t> padding(5, -1);
  const ActiveRows none(padding.data(), padding.size());
  CHECK_TRUE(none.size() == 0 && none.offsets() == std::vector<int32_t>{0});
  const ActiveRows empty(nullptr, 0);
  CHECK_TRUE(empty.size() == 0 && empty.offsets() == std::vector<int32_t>{0});
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestExampleFromHeader();
  tf_lsh::TestSmallGrouping();
  tf_lsh::TestGroupRowsAgainstSort();
  std::printf("PASS\n");
  return 0;
}
