"""Losses for many-label outputs (softmax, decoupled softmax, one-vs-rest binary), over an
active set or over all units."""

import tensorflow as tf

import tf_lsh_ops


def active_softmax_cross_entropy(ids, logits, labels):
    """Mean softmax cross-entropy over each example's active units (SLIDE's training loss).

    The target spreads probability 1 evenly over the labels in the active set (multi-label),
    the softmax runs over the active units only (padding ids -1 excluded), and examples with
    no label in their set add nothing. A fused C++ op (`tf_lsh_ops.active_softmax_cross_entropy`)
    computes the loss and its gradient in one pass.

    Args:
      ids: int32 `[batch, k]`, the active units (`LSHDense.active_outputs`).
      logits: float32 `[batch, k]`, their logits.
      labels: int `[batch, max_labels]`, -1 padded.

    Returns:
      A float32 scalar.
    """
    return tf_lsh_ops.active_softmax_cross_entropy(ids, logits, labels)


def dense_softmax_cross_entropy(logits, labels):
    """The same loss with the softmax over all units: logits `[batch, units]`."""
    labels = tf.cast(labels, tf.int32)
    valid = labels >= 0
    log_probs = tf.gather(tf.nn.log_softmax(logits), tf.maximum(labels, 0), batch_dims=1)
    num_labels = tf.reduce_sum(tf.cast(valid, logits.dtype), axis=1)
    per_example = -tf.reduce_sum(tf.where(valid, log_probs, 0.0), axis=1)
    has_label = num_labels > 0
    per_example = tf.where(has_label, per_example / tf.maximum(num_labels, 1.0), 0.0)
    return tf.reduce_sum(per_example) / tf.maximum(
        tf.reduce_sum(tf.cast(has_label, logits.dtype)), 1.0
    )


def active_decoupled_softmax_cross_entropy(ids, logits, labels):
    """Each label against the active set's negatives: the multi-label loss that keeps an
    example's labels from competing with each other.

    For every label of an example found in its active set, the softmax cross-entropy of that
    label over itself and the set's units that are not the example's labels,
    `softplus(logsumexp(negatives) - logit)`; averaged over the example's labels, then over the
    examples that have one in their set. `active_softmax_cross_entropy` instead spreads one
    target distribution over all the labels, which caps how high several labels can rank
    together (P@5) whatever the sampling (benchmarks/README.md has the figures).

    Args:
      ids: int32 `[batch, k]` or `[1, k]` (one set for the batch), the active units, -1 padded.
      logits: float32 `[batch, k]`, their logits.
      labels: int `[batch, max_labels]`, -1 padded.

    Returns:
      A float32 scalar.
    """
    logits, positive, valid = _active_masks(
        "active_decoupled_softmax_cross_entropy", ids, logits, labels
    )
    return _decoupled_softmax_cross_entropy(logits, positive, valid)


def dense_decoupled_softmax_cross_entropy(logits, labels):
    """`active_decoupled_softmax_cross_entropy` with every unit active: logits
    `[batch, units]`. The labels are scattered into a `[batch, units]` mask, as large as the
    logits, where comparing every unit with every label would take `max_labels` times more."""
    logits, positive, valid = _dense_masks("dense_decoupled_softmax_cross_entropy", logits, labels)
    return _decoupled_softmax_cross_entropy(logits, positive, valid)


def active_binary_cross_entropy(ids, logits, labels):
    """One-vs-rest over the active set: a binary (sigmoid) cross-entropy per active unit.

    Each unit of an example's set is its own yes/no problem, its logit pushed up if the unit
    is one of the example's labels and down otherwise, as the label-tree libraries (Parabel,
    PECOS) and SLIDE's successors train: no label competes with the example's other labels
    for one unit of probability, so several can rank high together (P@3, P@5). Summed over the
    set, divided by the example's labels found in it, averaged over the examples that have one.
    One fused C++ op (`tf_lsh_ops.active_binary_cross_entropy`) computes the loss and its
    gradient.

    Start the head's bias low, at about `log(labels per example / labels)` (`-8` for 5 labels
    of 20,000): with `bias_initializer="zeros"`, labels that seldom enter an active set keep a
    logit near 0 while training pushes the others' below it, and at exact inference they outrank
    the true labels. `LSHClassifier` warns about that combination.

    Args:
      ids: int32 `[batch, k]` or `[1, k]` (one set for the batch), the active units, -1 padded.
      logits: float32 `[batch, k]`, their logits.
      labels: int `[batch, max_labels]`, -1 padded.

    Returns:
      A float32 scalar.
    """
    return tf_lsh_ops.active_binary_cross_entropy(ids, logits, labels)


def dense_binary_cross_entropy(logits, labels):
    """`active_binary_cross_entropy` with every unit active: logits `[batch, units]`."""
    logits, positive, valid = _dense_masks("dense_binary_cross_entropy", logits, labels)
    return _binary_cross_entropy(logits, positive, valid)


def _active_masks(function, ids, logits, labels):
    """`(logits, positive, valid)`: boolean `[batch, k]` masks of the example's labels among
    its active units and of the units that are not padding, from `ids` `[batch or 1, k]`."""
    ids = tf.convert_to_tensor(ids, tf.int32)
    logits = tf.convert_to_tensor(logits)
    labels = tf.cast(labels, tf.int32)
    _check_shapes(function, ids=ids, logits=logits, labels=labels)
    valid = tf.broadcast_to(ids >= 0, tf.shape(logits))
    hit = tf.reduce_any(
        (ids[:, :, None] == labels[:, None, :]) & (labels[:, None, :] >= 0), axis=-1
    )
    return logits, tf.broadcast_to(hit, tf.shape(logits)) & valid, valid


def _dense_masks(function, logits, labels):
    """`_active_masks` with every unit active. The labels are scattered into a `[batch,
    units]` mask, as large as the logits, where comparing every unit with every label would
    take `max_labels` times more."""
    logits = tf.convert_to_tensor(logits)
    labels = tf.cast(labels, tf.int32)
    _check_shapes(function, logits=logits, labels=labels)
    positions = label_positions(labels)
    ones = tf.ones(tf.shape(positions)[:1], tf.int32)
    positive = tf.scatter_nd(positions, ones, tf.shape(logits)) > 0
    return logits, positive, tf.ones_like(positive)


def _mean_over_labelled_examples(per_example_sum, positive):
    """Each example's sum divided by its labels among the units; the mean over the examples
    that have one (0 if none has)."""
    num_positive = tf.reduce_sum(tf.cast(positive, per_example_sum.dtype), axis=1)
    has_label = num_positive > 0
    per_example = per_example_sum / tf.maximum(num_positive, 1.0)
    total = tf.reduce_sum(tf.where(has_label, per_example, tf.zeros_like(per_example)))
    return total / tf.maximum(tf.reduce_sum(tf.cast(has_label, total.dtype)), 1.0)


def _binary_cross_entropy(logits, positive, valid):
    per_unit = tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(positive, logits.dtype), logits)
    per_example = tf.reduce_sum(tf.where(valid, per_unit, tf.zeros_like(per_unit)), axis=1)
    return _mean_over_labelled_examples(per_example, positive)


def _decoupled_softmax_cross_entropy(logits, positive, valid):
    """The decoupled loss from boolean `[batch, k]` masks of the labels among the units and of
    the units that are not padding."""
    negative = valid & tf.logical_not(positive)
    # The lowest float rather than -inf: an example without negatives then adds 0, not NaN.
    negatives = tf.reduce_logsumexp(
        tf.where(negative, logits, logits.dtype.min), axis=1, keepdims=True
    )
    per_label = tf.where(positive, tf.nn.softplus(negatives - logits), tf.zeros_like(logits))
    return _mean_over_labelled_examples(tf.reduce_sum(per_label, axis=1), positive)


def _check_shapes(function, logits, labels, ids=None):
    """Rank 2 each; as many rows of labels as of logits; ids `[batch or 1, k]` beside logits
    `[batch, k]`. Named errors: a broadcast would fail with TensorFlow's own message, or
    (ids of one row) not at all."""
    named = {**({"ids": ids} if ids is not None else {}), "logits": logits, "labels": labels}
    for name, tensor in named.items():
        if tensor.shape.rank != 2:
            raise ValueError(f"{function}: {name} must have rank 2, got shape {tensor.shape}")
    tf.debugging.assert_equal(
        tf.shape(labels)[0],
        tf.shape(logits)[0],
        message=f"{function}: labels and logits must have as many rows",
    )
    if ids is not None:
        tf.debugging.assert_equal(
            tf.shape(ids)[1],
            tf.shape(logits)[1],
            message=f"{function}: ids and logits must have as many columns",
        )
        rows = tf.shape(ids)[0]
        tf.debugging.Assert(
            (rows == 1) | (rows == tf.shape(logits)[0]),
            [f"{function}: ids must have 1 row or as many as logits; ids rows:", rows],
        )


def label_positions(labels):
    """int32 `[n, 2]` `(row, label)` of every label of int32 `labels` `[batch, max_labels]`
    (-1 padded): where to scatter into a `[batch, units]` tensor."""
    rows = tf.broadcast_to(tf.range(tf.shape(labels)[0])[:, None], tf.shape(labels))
    return tf.boolean_mask(tf.stack([rows, labels], -1), labels >= 0)


# The losses `LSHClassifier(active_loss=...)` trains with, by name: (over an active set,
# over every unit for exact evaluation).
ACTIVE_LOSSES = {
    "softmax": (active_softmax_cross_entropy, dense_softmax_cross_entropy),
    "decoupled_softmax": (
        active_decoupled_softmax_cross_entropy,
        dense_decoupled_softmax_cross_entropy,
    ),
    "binary": (active_binary_cross_entropy, dense_binary_cross_entropy),
}
