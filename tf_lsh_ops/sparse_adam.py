"""`sparse_adam_apply`: the fused lazy-Adam update of a variable's touched rows."""

import tensorflow as tf

from tf_lsh_ops._checks import as_tensor, variable_handle
from tf_lsh_ops._loader import ops

_OP = "SparseAdamApply"


def sparse_adam_apply(
    variable, m, v, gradient, *, learning_rate, beta_1, beta_2, epsilon, step, name=None
):
    """Applies lazy Adam to the rows of `variable` named by an `IndexedSlices` gradient.

    Updates `variable`, `m` and `v` in place, on their touched rows only, in one multi-threaded
    pass (duplicate indices are summed first). The math is Keras' Adam on those rows:
    `alpha = learning_rate * sqrt(1 - beta_2^step) / (1 - beta_1^step)`,
    `m += (g - m) * (1 - beta_1)`, `v += (g^2 - v) * (1 - beta_2)`,
    `variable -= alpha * m / (sqrt(v) + epsilon)`.

    Args:
      variable, m, v: float32 `tf.Variable`s of one shape.
      gradient: `tf.IndexedSlices` for `variable`.
      learning_rate, beta_1, beta_2, epsilon: float scalars.
      step: the 1-based step number `t` (a scalar).
      name: optional op name.

    Returns:
      The op (in graph mode), or None eagerly.
    """
    return ops.tf_lsh_sparse_adam_apply(
        variable_handle(_OP, "variable", variable),
        variable_handle(_OP, "m", m),
        variable_handle(_OP, "v", v),
        gradient.indices,
        as_tensor(_OP, "gradient.values", gradient.values, tf.float32),
        *adam_inputs(learning_rate, beta_1, beta_2, epsilon, step),
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
