"""`sparse_adam_apply` and `sparse_rowwise_rmsprop_apply`: fused lazy updates of a variable's
touched rows."""

import tensorflow as tf

from tf_lsh_ops._checks import as_tensor, variable_handle
from tf_lsh_ops._loader import ops

_OP = "SparseAdamApply"
_NO_MOMENTUM_OP = "SparseAdamNoMomentumApply"
_ROWWISE_OP = "SparseRowwiseRmspropApply"


def sparse_adam_apply(
    variable, m, v, gradient, *, learning_rate, beta_1, beta_2, epsilon, step, name=None
):
    """Applies lazy Adam to the rows of `variable` named by an `IndexedSlices` gradient.

    Updates `variable`, `m` and `v` in place, on their touched rows only, in one multi-threaded
    pass (duplicate indices are summed first). The math is Keras' Adam on those rows:
    `alpha = learning_rate * sqrt(1 - beta_2^step) / (1 - beta_1^step)`,
    `m += (g - m) * (1 - beta_1)`, `v += (g^2 - v) * (1 - beta_2)`,
    `variable -= alpha * m / (sqrt(v) + epsilon)`.

    With `beta_1 = 0` the first moment is the gradient itself: pass `m=None` to keep none (half
    the state, a third less memory traffic); `variable -= alpha * g / (sqrt(v) + epsilon)`.

    Args:
      variable, v: float32 `tf.Variable`s of one shape.
      m: a float32 `tf.Variable` of that shape, or None when `beta_1` is 0.
      gradient: `tf.IndexedSlices` for `variable`.
      learning_rate, beta_1, beta_2, epsilon: float scalars.
      step: the 1-based step number `t` (a scalar).
      name: optional op name.

    Returns:
      The op (in graph mode), or None eagerly.
    """
    if m is None:
        return ops.tf_lsh_sparse_adam_no_momentum_apply(
            variable_handle(_NO_MOMENTUM_OP, "variable", variable),
            variable_handle(_NO_MOMENTUM_OP, "v", v),
            gradient.indices,
            as_tensor(_NO_MOMENTUM_OP, "gradient.values", gradient.values, tf.float32),
            *adam_no_momentum_inputs(_NO_MOMENTUM_OP, learning_rate, beta_1, beta_2, epsilon, step),
            name=name,
        )
    return ops.tf_lsh_sparse_adam_apply(
        variable_handle(_OP, "variable", variable),
        variable_handle(_OP, "m", m),
        variable_handle(_OP, "v", v),
        gradient.indices,
        as_tensor(_OP, "gradient.values", gradient.values, tf.float32),
        *adam_inputs(learning_rate, beta_1, beta_2, epsilon, step),
        name=name,
    )


def sparse_rowwise_rmsprop_apply(
    variable, v, gradient, *, learning_rate, beta_2, epsilon, step, name=None
):
    """Applies lazy rowwise RMSprop to the rows of `variable` named by an `IndexedSlices`
    gradient: one second moment per row, no first moment.

    For rows that stand for input features, as an embedding table's or a `SparseInputDense`
    kernel's do, this is the state FBGEMM's rowwise optimizers keep: a row's update reads
    and writes its weights and one number, a third of lazy Adam's memory traffic. Updates
    `variable` and `v` in place, on the touched rows only, in one multi-threaded pass
    (duplicate indices are summed first): `alpha = learning_rate * sqrt(1 - beta_2^step)`,
    `v[r] += (mean(g[r]^2) - v[r]) * (1 - beta_2)`,
    `variable[r] -= alpha * g[r] / (sqrt(v[r]) + epsilon)`; Adam with `beta_1 = 0` and each
    row's squared gradients averaged.

    Args:
      variable: a float32 `tf.Variable` of rank >= 1.
      v: a float32 `tf.Variable` with one value per row of `variable` (`[rows]` or
        `[rows, 1]`).
      gradient: `tf.IndexedSlices` for `variable`.
      learning_rate, beta_2, epsilon: float scalars.
      step: the 1-based step number `t` (a scalar).
      name: optional op name.

    Returns:
      The op (in graph mode), or None eagerly.
    """
    return ops.tf_lsh_sparse_rowwise_rmsprop_apply(
        variable_handle(_ROWWISE_OP, "variable", variable),
        variable_handle(_ROWWISE_OP, "v", v),
        gradient.indices,
        as_tensor(_ROWWISE_OP, "gradient.values", gradient.values, tf.float32),
        *rowwise_rmsprop_inputs(learning_rate, beta_2, epsilon, step),
        name=name,
    )


def adam_inputs(learning_rate, beta_1, beta_2, epsilon, step):
    """The six float32 scalars the Adam ops take: lr, beta1, beta2, epsilon and the two
    bias-correction powers beta1^step, beta2^step."""
    step = tf.cast(step, tf.float32)
    beta_1 = tf.cast(beta_1, tf.float32)
    beta_2 = tf.cast(beta_2, tf.float32)
    return (
        tf.cast(learning_rate, tf.float32),
        beta_1,
        beta_2,
        tf.cast(epsilon, tf.float32),
        tf.pow(beta_1, step),
        tf.pow(beta_2, step),
    )


def rowwise_rmsprop_inputs(learning_rate, beta_2, epsilon, step):
    """The four float32 scalars the rowwise RMSprop ops take: lr, beta2, epsilon and the
    bias-correction power beta2^step."""
    beta_2 = tf.cast(beta_2, tf.float32)
    return (
        tf.cast(learning_rate, tf.float32),
        beta_2,
        tf.cast(epsilon, tf.float32),
        tf.pow(beta_2, tf.cast(step, tf.float32)),
    )


def adam_no_momentum_inputs(op_name, learning_rate, beta_1, beta_2, epsilon, step):
    """The four float32 scalars the Adam ops without a first moment take (those of the rowwise
    RMSprop ops: with `beta_1 = 0`, `alpha = lr * sqrt(1 - beta2^step)`). `beta_1` must be 0;
    `op_name` is named in the error when a known value is not."""
    known = tf.get_static_value(beta_1)
    if known is None or known != 0:
        raise ValueError(
            f"{op_name}: keeping no first moment (m=None) needs beta_1 = 0, got {beta_1!r}"
        )
    return rowwise_rmsprop_inputs(learning_rate, beta_2, epsilon, step)
