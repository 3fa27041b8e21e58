// A batch of a multi-label sparse dataset, gathered from its CSR arrays by example numbers.
//
// The dataset holds, for example i, the features feature_ids / feature_values
// [feature_splits[i], feature_splits[i + 1]) and the labels label_ids [label_splits[i],
// label_splits[i + 1]). A batch of `num_rows` examples `rows` becomes what a model reads: the
// entries of a SparseTensor [num_rows, num_features] in row order (each example's features in
// its stored order) and a label matrix [num_rows, max_labels] padded with -1.
//
// Example (two examples; ask for example 1, then 0):
//   int64_t fs[3] = {0, 2, 3}, fid[3] = {4, 7, 1};  float fv[3] = {.5, 1, 2};
//   int64_t ls[3] = {0, 1, 3};  int32_t lid[3] = {9, 2, 5};  int64_t rows[2] = {1, 0};
//   // indices = {{0, 1}, {1, 4}, {1, 7}}, values = {2, .5, 1}, labels = {{2, 5}, {9, -1}}
#ifndef TF_LSH_OPS_CC_CORE_MULTI_LABEL_BATCH_H_
#define TF_LSH_OPS_CC_CORE_MULTI_LABEL_BATCH_H_

#include <cstdint>
#include <string>

namespace tf_lsh {

struct MultiLabelArrays {
  const int64_t* feature_splits;  // num_examples + 1
  const int64_t* feature_ids;
  const float* feature_values;
  const int64_t* label_splits;  // num_examples + 1
  const int32_t* label_ids;
  int64_t num_examples;
  int64_t num_feature_entries;  // size of feature_ids and feature_values
  int64_t num_label_entries;    // size of label_ids
};

// Returns "" and sets *num_entries (the batch's feature entries), or what is wrong: a row
// outside [0, num_examples), splits of a row that are decreasing or outside the arrays, a
// feature id outside [0, num_features), an example with more than max_labels labels. Reads
// only the rows' splits and feature ids (O(num_rows + num_entries)).
std::string CheckMultiLabelBatch(const MultiLabelArrays& data, const int64_t* rows,
                                 int64_t num_rows, int64_t num_features, int64_t max_labels,
                                 int64_t* num_entries);

// Writes indices [num_entries, 2], values [num_entries] and labels [num_rows, max_labels] of
// checked rows. Serial: a batch is tens of microseconds of copying, and tf.data maps batches
// in parallel.
void GatherMultiLabelBatch(const MultiLabelArrays& data, const int64_t* rows, int64_t num_rows,
                           int64_t max_labels, int64_t* indices, float* values,
                           int32_t* labels);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_MULTI_LABEL_BATCH_H_
