"""Tests of the fused scores-and-top-k op against tf.math.top_k over tf.matmul's scores."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

try:
    import tf_lsh_ops  # noqa: E402
except ModuleNotFoundError:  # Not installed: use the source tree this file belongs to.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tf_lsh_ops  # noqa: E402

from tensorflow.python.framework import ops as framework_ops  # noqa: E402

matmul_top_k = tf_lsh_ops.matmul_top_k
REJECTED = (tf.errors.InvalidArgumentError, ValueError)


def reference(queries, keys, biases, k):
    """What the op replaces: every score, then TensorFlow's top-k."""
    return tf.math.top_k(tf.matmul(queries, keys, transpose_b=True) + biases, k).indices


def distinct_case(seed, batch, dim, units):
    """Scores that are exact in float32 (whatever the order of the sums) and distinct within a
    row: products of entries in {-1, 0, 1} are integers of magnitude at most dim, and the
    biases are distinct multiples of 2^-16 in [0, 1), so no two units score alike."""
    assert units <= 2**16 and dim <= 64
    rng = np.random.default_rng(seed)
    queries = rng.integers(-1, 2, (batch, dim)).astype(np.float32)
    keys = rng.integers(-1, 2, (units, dim)).astype(np.float32)
    biases = (rng.permutation(units) / 2**16).astype(np.float32)
    return tf.constant(queries), tf.constant(keys), tf.constant(biases)


def tied_case(seed, batch, dim, units):
    """Exact integer scores in a small range: most units tie with many others."""
    rng = np.random.default_rng(seed)
    queries = rng.integers(-2, 3, (batch, dim)).astype(np.float32)
    keys = rng.integers(-2, 3, (units, dim)).astype(np.float32)
    biases = rng.integers(-2, 3, units).astype(np.float32)
    return tf.constant(queries), tf.constant(keys), tf.constant(biases)


@pytest.mark.parametrize(
    "batch, dim, units, k",
    [
        (128, 32, 1024, 50),
        (128, 32, 4099, 300),  # units not a multiple of any chunk
        (1, 32, 65536, 50),  # one row: the units are split between threads
        (8, 32, 16384, 3000),
        (5, 3, 37, 37),  # k = units: the full order
        (3, 4, 1000, 1),
        (2, 1, 20, 7),
    ],
)
def test_ids_equal_tf_top_k_of_distinct_scores(batch, dim, units, k):
    queries, keys, biases = distinct_case(batch * units + k, batch, dim, units)
    got = matmul_top_k(queries, keys, biases, k)
    assert got.dtype == tf.int32 and got.shape == (batch, k)
    np.testing.assert_array_equal(got, reference(queries, keys, biases, k))


@pytest.mark.parametrize("batch, dim, units, k", [(64, 8, 3000, 100), (1, 2, 9000, 700)])
def test_ties_go_to_the_lower_id_as_in_tf_top_k(batch, dim, units, k):
    queries, keys, biases = tied_case(units, batch, dim, units)
    scores = tf.matmul(queries, keys, transpose_b=True) + biases
    kth = tf.math.top_k(scores, k).values[:, -1:]
    assert int(tf.reduce_min(tf.reduce_sum(tf.cast(scores == kth, tf.int32), axis=1))) > 1
    np.testing.assert_array_equal(
        matmul_top_k(queries, keys, biases, k), reference(queries, keys, biases, k)
    )


def test_duplicated_key_rows_come_lower_id_first():
    # Real-valued scores; units 2i and 2i + 1 have the same key and bias, so they tie exactly.
    rng = np.random.default_rng(3)
    keys = np.repeat(rng.standard_normal((500, 16)).astype(np.float32), 2, axis=0)
    biases = np.repeat(rng.standard_normal(500).astype(np.float32), 2)
    queries = rng.standard_normal((6, 16)).astype(np.float32)
    ids = matmul_top_k(queries, keys, biases, 40).numpy()
    np.testing.assert_array_equal(ids[:, 0::2] % 2, 0)
    np.testing.assert_array_equal(ids[:, 1::2], ids[:, 0::2] + 1)
    # The pairs themselves are the 20 best keys, best first (by a float64 reference, far from
    # ties: the gaps between the best 21 distinct scores are checked to exceed rounding).
    scores = queries.astype(np.float64) @ keys[0::2].T.astype(np.float64) + biases[0::2]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :21]
    gaps = -np.diff(np.take_along_axis(scores, order, axis=1), axis=1)
    assert gaps.min() > 1e-4
    np.testing.assert_array_equal(ids[:, 0::2] // 2, order[:, :20])


def test_nan_scores_rank_as_minus_infinity():
    queries = tf.constant([[1.0, 2.0], [0.0, -1.0]])
    keys = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    biases = tf.constant([float("nan"), 0.0, float("-inf"), 0.5, float("nan"), float("inf")])
    # Row 0 scores: nan, 2, -inf, 2.5, nan, inf; row 1: nan, -1, -inf, 0.5, nan, inf.
    np.testing.assert_array_equal(
        matmul_top_k(queries, keys, biases, 6), [[5, 3, 1, 0, 2, 4], [5, 3, 1, 0, 2, 4]]
    )
    np.testing.assert_array_equal(matmul_top_k(queries, keys, biases, 2), [[5, 3], [5, 3]])


def test_zero_scores_of_either_sign_tie():
    queries, keys = tf.zeros([2, 3]), tf.ones([6, 3])
    biases = tf.constant([-0.0, 0.0, -0.0, 1.0, 0.0, -0.0])
    got = matmul_top_k(queries, keys, biases, 6)
    np.testing.assert_array_equal(got, [[3, 0, 1, 2, 4, 5]] * 2)
    np.testing.assert_array_equal(got, reference(queries, keys, biases, 6))


def test_edge_sizes():
    # An empty batch, and dim 0 (every product 0: the biases' order).
    assert matmul_top_k(tf.zeros([0, 3]), tf.ones([5, 3]), tf.zeros([5]), 2).shape == (0, 2)
    biases = tf.constant([0.5, -1.0, 3.0, 0.25])
    np.testing.assert_array_equal(
        matmul_top_k(tf.zeros([2, 0]), tf.zeros([4, 0]), biases, 3), [[2, 0, 3], [2, 0, 3]]
    )


def test_in_a_tf_function_with_unknown_shapes():
    spec = tf.TensorSpec([None, None], tf.float32)

    @tf.function(input_signature=[spec, spec, tf.TensorSpec([None], tf.float32)])
    def top(queries, keys, biases):
        ids = matmul_top_k(queries, keys, biases, 5)
        assert ids.shape.as_list() == [None, 5]
        return ids

    queries, keys, biases = distinct_case(0, 9, 12, 700)
    np.testing.assert_array_equal(top(queries, keys, biases), reference(queries, keys, biases, 5))


def test_not_differentiable():
    assert framework_ops._gradient_registry.lookup(tf_lsh_ops._loader.op_type("MatmulTopK")) is None
    queries, keys, biases = (tf.Variable(x) for x in distinct_case(1, 2, 3, 10))
    with tf.GradientTape() as tape:
        ids = matmul_top_k(queries, keys, biases, 3)
        loss = tf.reduce_sum(tf.gather(biases, ids))  # differentiable through the gather only
    grads = tape.gradient(loss, [queries, keys, biases])
    assert grads[0] is None and grads[1] is None
    counts = np.bincount(ids.numpy().ravel(), minlength=10)
    np.testing.assert_array_equal(tf.convert_to_tensor(grads[2]), counts)


def _call(eager, queries, keys, biases, k):
    if eager:
        return matmul_top_k(queries, keys, biases, k)
    return tf.function(lambda: matmul_top_k(queries, keys, biases, k))()


Q, K, B = tf.zeros([2, 3]), tf.zeros([4, 3]), tf.zeros([4])


@pytest.mark.parametrize("eager", [True, False])
@pytest.mark.parametrize(
    "args, pattern",
    [
        ((tf.zeros([3]), K, B, 1), r"MatmulTopK: queries must have rank 2, got shape \[3\]"),
        ((Q, tf.zeros([4, 3, 1]), B, 1), r"MatmulTopK: keys must have rank 2, got shape \[4,3,1\]"),
        ((Q, K, tf.zeros([4, 1]), 1), r"MatmulTopK: biases must have rank 1, got shape \[4,1\]"),
        (
            (Q, tf.zeros([4, 5]), B, 1),
            r"MatmulTopK: dimension 1 of queries \(shape \[2,3\]\) must equal dimension 1 of "
            r"keys \(shape \[4,5\]\)",
        ),
        (
            (Q, K, tf.zeros([5]), 1),
            r"MatmulTopK: dimension 0 of keys \(shape \[4,3\]\) must equal dimension 0 of "
            r"biases \(shape \[5\]\)",
        ),
        ((Q, K, B, 5), r"MatmulTopK: k = 5 must be at most the number of units .*\[4,3\]"),
        ((Q, K, B, 0), r"MatmulTopK: k must be an int >= 1, got 0"),
        ((Q, K, B, 2.0), r"MatmulTopK: k must be an int >= 1, got 2.0"),
        ((Q, K, B, True), r"MatmulTopK: k must be an int >= 1, got True"),
        (
            (tf.zeros([2, 3], tf.float64), K, B, 1),
            r"MatmulTopK: queries must be float32, got float64 with shape \(2, 3\)",
        ),
        ((Q, tf.zeros([4, 3], tf.int32), B, 1), r"MatmulTopK: keys must be float32, got int32"),
        ((Q, K, tf.zeros([4], tf.float16), 1), r"MatmulTopK: biases must be float32, got float16"),
    ],
)
def test_bad_inputs_name_the_op_and_argument(eager, args, pattern):
    with pytest.raises(REJECTED, match=pattern):
        _call(eager, *args)


def test_k_beyond_units_known_only_at_run_time():
    spec = tf.TensorSpec([None, 3], tf.float32)

    @tf.function(input_signature=[spec, spec, tf.TensorSpec([None], tf.float32)])
    def top(queries, keys, biases):
        return matmul_top_k(queries, keys, biases, 5)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"MatmulTopK: k = 5 .*\[4,3\]"):
        top(Q, K, B)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
