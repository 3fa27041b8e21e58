#include "tf_lsh_ops/cc/core/multi_label_batch.h"

#include <algorithm>
#include <string>

namespace tf_lsh {
namespace {

// "" if [splits[row], splits[row + 1]) is a range of an array of `size` entries.
std::string CheckSplits(const char* name, const int64_t* splits, int64_t row, int64_t size) {
  const int64_t begin = splits[row], end = splits[row + 1];
  if (0 <= begin && begin <= end && end <= size) return "";
  return std::string(name) + "[" + std::to_string(row) + "], [" + std::to_string(row + 1) +
         "] = " + std::to_string(begin) + ", " + std::to_string(end) +
         " is not a range of the " + std::to_string(size) + " entries";
}

}  // namespace

std::string CheckMultiLabelBatch(const MultiLabelArrays& data, const int64_t* rows,
                                 int64_t num_rows, int64_t num_features, int64_t max_labels,
                                 int64_t* num_entries) {
  int64_t entries = 0;
  for (int64_t i = 0; i < num_rows; ++i) {
    const int64_t row = rows[i];
    if (row < 0 || row >= data.num_examples) {
      return "rows[" + std::to_string(i) + "] = " + std::to_string(row) + " is outside [0, " +
             std::to_string(data.num_examples) + ")";
    }
    std::string error =
        CheckSplits("feature_splits", data.feature_splits, row, data.num_feature_entries);
    if (error.empty()) {
      error = CheckSplits("label_splits", data.label_splits, row, data.num_label_entries);
    }
    if (!error.empty()) return error;
    const int64_t labels = data.label_splits[row + 1] - data.label_splits[row];
    if (labels > max_labels) {
      return "example " + std::to_string(row) + " has " + std::to_string(labels) +
             " labels, more than max_labels = " + std::to_string(max_labels);
    }
    for (int64_t j = data.feature_splits[row]; j < data.feature_splits[row + 1]; ++j) {
      if (data.feature_ids[j] < 0 || data.feature_ids[j] >= num_features) {
        return "feature_ids[" + std::to_string(j) + "] = " + std::to_string(data.feature_ids[j]) +
               " (example " + std::to_string(row) + ") is outside [0, num_features = " +
               std::to_string(num_features) + ")";
      }
    }
    entries += data.feature_splits[row + 1] - data.feature_splits[row];
  }
  *num_entries = entries;
  return "";
}

void GatherMultiLabelBatch(const MultiLabelArrays& data, const int64_t* rows, int64_t num_rows,
                           int64_t max_labels, int64_t* indices, float* values,
                           int32_t* labels) {
  int64_t at = 0;
  for (int64_t i = 0; i < num_rows; ++i) {
    const int64_t row = rows[i];
    const int64_t begin = data.feature_splits[row], end = data.feature_splits[row + 1];
    std::copy(data.feature_values + begin, data.feature_values + end, values + at);
    for (int64_t j = begin; j < end; ++j, ++at) {
      indices[2 * at] = i;
      indices[2 * at + 1] = data.feature_ids[j];
    }
    int32_t* label_row = labels + i * max_labels;
    const int64_t first = data.label_splits[row], count = data.label_splits[row + 1] - first;
    std::copy(data.label_ids + first, data.label_ids + first + count, label_row);
    std::fill(label_row + count, label_row + max_labels, -1);
  }
}

}  // namespace tf_lsh
