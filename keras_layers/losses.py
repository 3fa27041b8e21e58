"""Softmax cross-entropy for many-label outputs: over an active set, or over all units."""

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
