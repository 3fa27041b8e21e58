"""Losses over each example's active set, each one fused op with its gradient:
`active_softmax_cross_entropy` and `active_binary_cross_entropy`."""

import tensorflow as tf

from tf_lsh_ops._checks import as_tensor
from tf_lsh_ops._loader import op_type, ops

_SOFTMAX_OP = "ActiveSoftmaxCrossEntropy"
_BINARY_OP = "ActiveBinaryCrossEntropy"


def active_softmax_cross_entropy(ids, logits, labels, name=None):
    """Mean softmax cross-entropy over each example's active units (SLIDE's training loss).

    The softmax runs over the active units of each example (padding ids `-1` left out); the
    target spreads probability 1 evenly over the example's labels in its set; examples with no
    label in their set add nothing, and the loss is the mean over the others. One C++ pass
    computes the loss and its gradient (saved for the backward pass): about ten times faster
    than the same loss composed of TensorFlow ops on `[batch, k]` tensors.

    Args:
      ids: int32 `[B, K]`, the active units (`LSHDense.active_outputs`), or `[1, K]` when
        the whole batch shares one active set.
      logits: float32 `[B, K]`, their logits.
      labels: int32 or int64 `[B, L]`, each example's labels, -1 padded.
      name: optional op name.

    Returns:
      A float32 scalar; differentiable with respect to `logits`.

    Example:

    >>> round(float(active_softmax_cross_entropy([[4, 9]], [[0.0, 0.0]], [[9]])), 6)  # log 2
    0.693147
    """
    ids, logits, labels = _loss_inputs(_SOFTMAX_OP, ids, logits, labels)
    return ops.tf_lsh_active_softmax_cross_entropy(ids, logits, labels, name=name).loss


def active_binary_cross_entropy(ids, logits, labels, name=None):
    """One-vs-rest over each example's active units: a sigmoid cross-entropy per unit.

    Each active unit (padding ids `-1` left out) is its own yes/no problem, positive if it is
    one of the example's labels; an example's terms are summed and divided by its labels in
    the set, and the loss is the mean over the examples that have one. One C++ pass computes
    the loss and its gradient, where the same loss composed of TensorFlow ops (a `[batch, k,
    labels]` comparison, then about twenty ops and their gradients) took a tenth of a training
    step (`keras_layers.active_binary_cross_entropy` documents the loss).

    Args:
      ids: int32 `[B, K]`, the active units, or `[1, K]` for one active set for the batch.
      logits: float32 `[B, K]`, their logits.
      labels: int32 or int64 `[B, L]`, each example's labels, -1 padded.
      name: optional op name.

    Returns:
      A float32 scalar; differentiable with respect to `logits`.

    Example:

    >>> round(float(active_binary_cross_entropy([[4, 9]], [[0.0, 0.0]], [[9]])), 6)  # 2 log 2
    1.386294
    """
    ids, logits, labels = _loss_inputs(_BINARY_OP, ids, logits, labels)
    return ops.tf_lsh_active_binary_cross_entropy(ids, logits, labels, name=name).loss


def _loss_inputs(op, ids, logits, labels):
    """The three inputs as the ops take them (int64 labels cast), or an error naming `op`."""
    ids = as_tensor(op, "ids", ids, tf.int32)
    logits = as_tensor(op, "logits", logits, tf.float32)
    labels = tf.convert_to_tensor(labels)
    if labels.dtype == tf.int64:
        labels = tf.cast(labels, tf.int32)
    return ids, logits, as_tensor(op, "labels", labels, tf.int32)


@tf.RegisterGradient(op_type(_SOFTMAX_OP))
@tf.RegisterGradient(op_type(_BINARY_OP))
def _active_loss_grad(op, grad_loss, unused_grad_grad_logits):
    return [None, grad_loss * op.outputs[1], None]
