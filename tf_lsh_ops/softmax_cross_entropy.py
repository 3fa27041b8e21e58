"""`active_softmax_cross_entropy`: the loss over each example's active set, as one fused op."""

import tensorflow as tf

from tf_lsh_ops._checks import as_tensor
from tf_lsh_ops._loader import op_type, ops

_OP = "ActiveSoftmaxCrossEntropy"


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

    >>> active_softmax_cross_entropy([[4, 9]], [[0.0, 0.0]], [[9]]).numpy()  # log 2
    0.6931472
    """
    ids = as_tensor(_OP, "ids", ids, tf.int32)
    logits = as_tensor(_OP, "logits", logits, tf.float32)
    labels = tf.convert_to_tensor(labels)
    if labels.dtype == tf.int64:
        labels = tf.cast(labels, tf.int32)
    labels = as_tensor(_OP, "labels", labels, tf.int32)
    return ops.tf_lsh_active_softmax_cross_entropy(ids, logits, labels, name=name).loss


@tf.RegisterGradient(op_type(_OP))
def _active_softmax_cross_entropy_grad(op, grad_loss, unused_grad_grad_logits):
    return [None, grad_loss * op.outputs[1], None]
