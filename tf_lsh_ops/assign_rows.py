"""`assign_rows`: writes a block of a variable's rows in place."""

import tensorflow as tf

from tf_lsh_ops._checks import as_tensor, variable_handle
from tf_lsh_ops._loader import ops

_OP = "ResourceAssignRows"


def assign_rows(variable, start, values, name=None):
    """Writes `values` into rows `[start, start + len(values))` of `variable`, in place.

    `variable[start:start + n].assign(values)` and `variable.scatter_update(...)` do the same,
    but they put the variable in TensorFlow's copy-on-read mode: from then on every read of it
    (a matmul, a checkpoint) copies the whole variable first, a gigabyte per read for a
    16k x 16k kernel. This op leaves that mode alone, so a wide kernel can be drawn block by
    block into its variable.

    Args:
      variable: a float32 `[rows, d]` `tf.Variable` or Keras variable.
      start: the first row written (an int).
      values: float32 `[n, d]`, `0 <= start <= rows - n`.
      name: optional op name.

    Returns:
      The op (in graph mode), or None eagerly.
    """
    return ops.tf_lsh_resource_assign_rows(
        variable_handle(_OP, "variable", variable),
        as_tensor(_OP, "start", start, tf.int64),
        as_tensor(_OP, "values", values, tf.float32),
        name=name,
    )
