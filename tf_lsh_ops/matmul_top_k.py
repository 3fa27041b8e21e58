"""`matmul_top_k`: each query's k best units by inner product plus bias, as one fused op."""

import numbers

import tensorflow as tf

from tf_lsh_ops._checks import as_tensor
from tf_lsh_ops._loader import op_type, ops

_OP = "MatmulTopK"


def matmul_top_k(queries, keys, biases, k, name=None):
    """The ids of each query's `k` largest `queries @ keys^T + biases`, best first.

    The same ids as `tf.math.top_k(tf.matmul(queries, keys, transpose_b=True) + biases,
    k).indices`: by decreasing score, ties to the lower id. The `[batch, units]` scores are
    never formed: the units are scored a few hundred at a time and each row keeps only those
    that beat its current k-th best, so a layer of 64k units costs about the matmul alone.
    Scores are summed in order of the depth, so they may differ from `tf.matmul`'s in the last
    bit, and near-ties may then be ordered differently. A NaN score ranks as `-inf` (after
    every number; among NaN and `-inf` scores, lower ids first). Not differentiable.

    Args:
      queries: float32 `[batch, dim]`.
      keys: float32 `[units, dim]`, row `u` being unit `u`'s vector.
      biases: float32 `[units]`.
      k: int, `1 <= k <= units`.
      name: optional op name.

    Returns:
      int32 `[batch, k]` unit ids.

    Example:

    >>> matmul_top_k([[1.0, 0.0]], [[0.0, 1.0], [2.0, 0.0], [1.0, 0.0]], [0.0, 0.0, 1.0],
    ...              k=2).numpy()  # scores 0, 2, 2: the tie goes to unit 1
    array([[1, 2]], dtype=int32)
    """
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise tf.errors.InvalidArgumentError(None, None, f"{_OP}: k must be an int >= 1, got {k!r}")
    queries = as_tensor(_OP, "queries", queries, tf.float32)
    keys = as_tensor(_OP, "keys", keys, tf.float32)
    biases = as_tensor(_OP, "biases", biases, tf.float32)
    return ops.tf_lsh_matmul_top_k(queries, keys, biases, k=int(k), name=name)


tf.no_gradient(op_type(_OP))
