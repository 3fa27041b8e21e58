#include "tf_lsh_ops/cc/core/multi_label_batch.h"

#include <cstdio>
#include <string>
#include <vector>

#include "tf_lsh_ops/cc/core/test_util.h"

namespace tf_lsh {
namespace {

// The header's example: two examples, asked for in reverse order.
struct Fixture {
  std::vector<int64_t> feature_splits = {0, 2, 3}, feature_ids = {4, 7, 1};
  std::vector<float> feature_values = {.5f, 1.f, 2.f};
  std::vector<int64_t> label_splits = {0, 1, 3};
  std::vector<int32_t> label_ids = {9, 2, 5};
  MultiLabelArrays arrays() const {
    return {feature_splits.data(), feature_ids.data(), feature_values.data(),
            label_splits.data(),   label_ids.data(),   2,
            3,                     3};
  }
};

void TestExampleFromHeader() {
  const Fixture f;
  const int64_t rows[3] = {1, 0, 1};  // repeated rows are allowed
  int64_t entries = -1;
  CHECK_TRUE(CheckMultiLabelBatch(f.arrays(), rows, 3, 8, 2, &entries).empty());
  CHECK_TRUE(entries == 4);
  std::vector<int64_t> indices(2 * entries, -7);
  std::vector<float> values(entries, -7.f);
  std::vector<int32_t> labels(3 * 2, -7);
  GatherMultiLabelBatch(f.arrays(), rows, 3, 2, indices.data(), values.data(), labels.data());
  CHECK_TRUE((indices == std::vector<int64_t>{0, 1, 1, 4, 1, 7, 2, 1}));
  CHECK_TRUE((values == std::vector<float>{2.f, .5f, 1.f, 2.f}));
  CHECK_TRUE((labels == std::vector<int32_t>{2, 5, 9, -1, 2, 5}));
  // Wider label rows are padded; an empty batch is fine.
  std::vector<int32_t> wide(4, -7);
  GatherMultiLabelBatch(f.arrays(), rows + 1, 1, 4, indices.data(), values.data(), wide.data());
  CHECK_TRUE((wide == std::vector<int32_t>{9, -1, -1, -1}));
  CHECK_TRUE(CheckMultiLabelBatch(f.arrays(), rows, 0, 8, 2, &entries).empty() && entries == 0);
}

void TestErrorsNameTheProblem() {
  Fixture f;
  int64_t entries;
  const int64_t outside[1] = {2};
  std::string error = CheckMultiLabelBatch(f.arrays(), outside, 1, 8, 2, &entries);
  CHECK_TRUE(error.find("rows[0] = 2 is outside [0, 2)") != std::string::npos);
  const int64_t row1[1] = {1};
  error = CheckMultiLabelBatch(f.arrays(), row1, 1, 8, 1, &entries);
  CHECK_TRUE(error.find("example 1 has 2 labels, more than max_labels = 1") != std::string::npos);
  const int64_t row0[1] = {0};
  error = CheckMultiLabelBatch(f.arrays(), row0, 1, 7, 2, &entries);  // feature 7 of 7
  CHECK_TRUE(error.find("feature_ids[1] = 7 (example 0) is outside [0, num_features = 7)") !=
             std::string::npos);
  f.feature_splits[2] = 4;  // past the 3 entries
  error = CheckMultiLabelBatch(f.arrays(), row1, 1, 8, 2, &entries);
  CHECK_TRUE(error.find("feature_splits[1], [2] = 2, 4") != std::string::npos);
  f.feature_splits = {0, 2, 3};
  f.label_splits[1] = 5;  // decreasing from row 1 to 2
  error = CheckMultiLabelBatch(f.arrays(), row1, 1, 8, 2, &entries);
  CHECK_TRUE(error.find("label_splits[1], [2] = 5, 3") != std::string::npos);
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestExampleFromHeader();
  tf_lsh::TestErrorsNameTheProblem();
  std::printf("PASS\n");
  return 0;
}
