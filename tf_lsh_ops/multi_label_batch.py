"""`multi_label_batch`: a batch of a multi-label sparse dataset, gathered by example numbers."""

import tensorflow as tf

from tf_lsh_ops._checks import as_tensor
from tf_lsh_ops._loader import ops

_OP = "MultiLabelBatch"


def multi_label_batch(
    feature_splits,
    feature_ids,
    feature_values,
    label_splits,
    label_ids,
    rows,
    *,
    num_features,
    max_labels,
    name=None,
):
    """The examples `rows` of a dataset in CSR form, as a model reads them.

    Example `i` has the features `feature_ids[feature_splits[i]:feature_splits[i + 1]]` (with
    `feature_values` alike) and the labels `label_ids[label_splits[i]:label_splits[i + 1]]`.
    One op gathers a batch (`keras_layers.MultiLabelData.dataset` maps it over batches of
    example numbers), where ragged gathers and conversions take a dozen.

    >>> x, y = multi_label_batch([0, 2, 3], [4, 7, 1], [0.5, 1.0, 2.0], [0, 1, 3], [9, 2, 5],
    ...                          [1, 0], num_features=8, max_labels=2)
    >>> tf.sparse.to_dense(x).numpy()[:, [1, 4, 7]]
    array([[2. , 0. , 0. ],
           [0. , 0.5, 1. ]], dtype=float32)
    >>> y.numpy()
    array([[ 2,  5],
           [ 9, -1]], dtype=int32)

    Args:
      feature_splits: int64 `[num_examples + 1]`, nondecreasing offsets into the features.
      feature_ids: int64 `[num_feature_entries]`, each in `[0, num_features)`.
      feature_values: float32 `[num_feature_entries]`.
      label_splits: int64 `[num_examples + 1]`, offsets into the labels.
      label_ids: int32 `[num_label_entries]`.
      rows: int64 `[batch]`, example numbers in `[0, num_examples)` (repeats allowed).
      num_features: the width of the features.
      max_labels: the width of the label matrix (at least any example's label count).
      name: optional op name.

    Returns:
      `(x, labels)`: a `tf.SparseTensor` `[batch, num_features]` (each example's features in
      stored order) and int32 `[batch, max_labels]`, -1 padded.
    """
    indices, values, dense_shape, labels = ops.tf_lsh_multi_label_batch(
        as_tensor(_OP, "feature_splits", feature_splits, tf.int64),
        as_tensor(_OP, "feature_ids", feature_ids, tf.int64),
        as_tensor(_OP, "feature_values", feature_values, tf.float32),
        as_tensor(_OP, "label_splits", label_splits, tf.int64),
        as_tensor(_OP, "label_ids", label_ids, tf.int32),
        as_tensor(_OP, "rows", rows, tf.int64),
        num_features=num_features,
        max_labels=max_labels,
        name=name,
    )
    return tf.SparseTensor(indices, values, dense_shape), labels
