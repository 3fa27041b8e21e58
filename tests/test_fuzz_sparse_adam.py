"""Fuzz of the in-place variable updates: sparse_adam_apply (lazy Adam on the rows of an
IndexedSlices gradient, with or without a first moment), sparse_rowwise_rmsprop_apply (one
moment per row) and assign_rows. fuzz_common.py describes the calls and the TF_LSH_FUZZ_*
variables."""

import sys

import numpy as np
import pytest
import tensorflow as tf
from fuzz_common import (
    INT32_MIN,
    assert_close,
    floats,
    fuzz_test,
    maybe_graph,
    pick,
    rejects,
    special_rate,
)
from lsh_references import INT32_MAX, reference_adam, reference_rowwise_rmsprop

import tf_lsh_ops

# The malformed rows and gradients both row updates reject.
ROW_MUTATIONS = ("index", "indices-rank", "grad-rows", "grad-row-shape", "grad-rank")


def mutated_rows(rng, mutation, rows, grad, num_rows):
    """`(indices, gradient values)` of a sparse row update, broken as `mutation` says."""
    indices, values = rows, grad
    count, row_shape = len(rows), grad.shape[1:]
    if mutation == "index":
        bad = [num_rows, -1, INT32_MAX, INT32_MIN] + ([2**40] if rows.dtype == np.int64 else [])
        indices = rows.copy()
        indices[rng.integers(count)] = rng.choice(bad)
    elif mutation == "indices-rank":
        indices = rows.reshape(-1, 1) if rng.random() < 0.5 else np.asarray(0, rows.dtype)
    elif mutation == "grad-rows":
        values = floats(rng, (count + 1, *row_shape))
    elif mutation == "grad-row-shape":
        wrong = list(row_shape)
        wrong[rng.integers(len(wrong))] += 1
        values = floats(rng, (count, *wrong))
    elif mutation == "grad-rank":
        values = floats(rng, (count, *row_shape, 1))
    return indices, values


ADAM_MUTATIONS = (
    *ROW_MUTATIONS,
    "slot-shape",
    "scalar-var",
    "var-dtype",
    "hyper-shape",
    "grad-dtype",
    "indices-dtype",
)


HYPER = ("learning_rate", "beta_1", "beta_2", "epsilon", "step")


def fuzz_sparse_adam(rng):
    mutation = pick(rng, ADAM_MUTATIONS)
    num_rows = int(rng.integers(1 if mutation == "index" else 0, 9))
    row_shape = tuple(rng.integers(0, 5, int(rng.integers(0, 3))))
    if mutation in ("grad-row-shape",):
        row_shape = row_shape or (3,)
    shape = (num_rows, *row_shape)
    count = int(rng.integers(1 if mutation == "index" else 0, 10)) if num_rows else 0
    rows = rng.integers(0, max(num_rows, 1), count).astype(rng.choice([np.int32, np.int64]))
    grad = floats(rng, (count, *row_shape), special_rate(rng) / 3)
    var0, m0 = floats(rng, shape), floats(rng, shape)
    v0 = rng.uniform(0, 1, shape).astype(np.float32)
    hyper = dict(
        learning_rate=float(rng.choice([1e-3, 0.1, rng.uniform(1e-4, 1)])),
        beta_1=float(rng.choice([0.0, 0.9, rng.uniform(0, 0.99)])),
        beta_2=float(rng.choice([0.0, 0.999, rng.uniform(0, 0.999)])),
        epsilon=float(rng.choice([1e-7, 1e-3, rng.uniform(1e-8, 1e-3)])),
        step=int(rng.choice([1, 2, rng.integers(1, 1000)])),
    )
    var, m, v = tf.Variable(var0), tf.Variable(m0), tf.Variable(v0)
    # With beta_1 = 0, half the calls keep no first moment (SparseAdamNoMomentumApply).
    no_first_moment = hyper["beta_1"] == 0.0 and rng.random() < 0.5
    if no_first_moment:
        m = None
    indices, values = rows, grad
    if mutation is not None:
        if mutation in ROW_MUTATIONS:
            indices, values = mutated_rows(rng, mutation, rows, grad, num_rows)
        elif mutation == "slot-shape":
            other = tf.Variable(floats(rng, (num_rows + 1, *row_shape)))
            m, v = (other, v) if m is not None and rng.random() < 0.5 else (m, other)
        elif mutation == "scalar-var":
            var, v = tf.Variable(1.0), tf.Variable(0.0)
            m = None if no_first_moment else tf.Variable(0.0)
            indices, values = np.zeros(0, np.int32), np.zeros(0, np.float32)
        elif mutation == "var-dtype":
            var = tf.Variable(var0.astype(np.float64))
        elif mutation == "hyper-shape":
            name = str(rng.choice(["learning_rate", "beta_1", "beta_2", "epsilon"]))
            hyper[name] = [hyper[name]] * 2
        elif mutation == "grad-dtype":
            values = grad.astype(np.float64)
        elif mutation == "indices-dtype":  # TF's attr check: Tindices is int32 or int64
            indices = rows.astype(np.float32)
        gradient = tf.IndexedSlices(tf.constant(values), tf.constant(indices))
        rejects(
            lambda: maybe_graph(
                rng, lambda: tf_lsh_ops.sparse_adam_apply(var, m, v, gradient, **hyper)
            ),
            *(x for x in (var, m, v) if x is not None),
            # Float indices fail TF's own type check of the op's Tindices attr, before our code:
            # InvalidArgumentError eagerly, TypeError while tracing a tf.function.
            also=(TypeError,) if mutation == "indices-dtype" else (),
        )
        return mutation
    gradient = tf.IndexedSlices(tf.constant(grad), tf.constant(rows))
    maybe_graph(rng, lambda: tf_lsh_ops.sparse_adam_apply(var, m, v, gradient, **hyper))
    want = reference_adam(var0, m0, v0, rows, grad, *(hyper[h] for h in HYPER))
    for name, got, expected in zip(("var", "m", "v"), (var, m, v), want, strict=True):
        if got is None:  # no first moment kept
            continue
        scale = np.abs(expected.astype(np.float64))
        assert_close(got.numpy(), expected.astype(np.float64), scale, name, rtol=1e-6)
    untouched = np.setdiff1d(np.arange(num_rows), rows)
    assert np.array_equal(var.numpy()[untouched], var0[untouched], equal_nan=True)
    return None


ROWWISE_MUTATIONS = (
    *ROW_MUTATIONS,
    "moment-shape",
    "scalar-var",
    "var-dtype",
    "hyper-shape",
)


def fuzz_sparse_rowwise_rmsprop(rng):
    mutation = pick(rng, ROWWISE_MUTATIONS)
    num_rows = int(rng.integers(1 if mutation == "index" else 0, 9))
    row_shape = tuple(rng.integers(1 if mutation == "grad-row-shape" else 0, 5, 1))
    shape = (num_rows, *row_shape)
    count = int(rng.integers(1 if mutation == "index" else 0, 10)) if num_rows else 0
    rows = rng.integers(0, max(num_rows, 1), count).astype(rng.choice([np.int32, np.int64]))
    grad = floats(rng, (count, *row_shape), special_rate(rng) / 3)
    var0 = floats(rng, shape)
    v0 = rng.uniform(0, 1, (num_rows, 1) if rng.random() < 0.5 else (num_rows,))
    v0 = v0.astype(np.float32)
    hyper = dict(
        learning_rate=float(rng.choice([1e-3, 0.1, rng.uniform(1e-4, 1)])),
        beta_2=float(rng.choice([0.0, 0.999, rng.uniform(0, 0.999)])),
        epsilon=float(rng.choice([1e-7, 1e-3, rng.uniform(1e-8, 1e-3)])),
        step=int(rng.choice([1, 2, rng.integers(1, 1000)])),
    )
    var, v = tf.Variable(var0), tf.Variable(v0)
    indices, values = rows, grad

    def apply():
        gradient = tf.IndexedSlices(tf.constant(values), tf.constant(indices))
        return tf_lsh_ops.sparse_rowwise_rmsprop_apply(var, v, gradient, **hyper)

    if mutation is not None:
        if mutation in ROW_MUTATIONS:
            indices, values = mutated_rows(rng, mutation, rows, grad, num_rows)
        elif mutation == "moment-shape":
            v = tf.Variable(floats(rng, (num_rows + 1,) if rng.random() < 0.5 else shape + (2,)))
        elif mutation == "scalar-var":
            var, v = tf.Variable(1.0), tf.Variable(0.0)
            indices, values = np.zeros(0, np.int32), np.zeros(0, np.float32)
        elif mutation == "var-dtype":
            var = tf.Variable(var0.astype(np.float64))
        elif mutation == "hyper-shape":
            name = str(rng.choice(["learning_rate", "beta_2", "epsilon"]))
            hyper[name] = [hyper[name]] * 2
        rejects(lambda: maybe_graph(rng, apply), var, v)
        return mutation
    maybe_graph(rng, apply)
    want_var, want_v = reference_rowwise_rmsprop(
        var0, v0.reshape(num_rows), rows, grad, *(hyper[h] for h in ROWWISE_HYPER)
    )
    for name, got, expected in (("var", var, want_var), ("v", v, want_v.reshape(v0.shape))):
        scale = np.abs(expected.astype(np.float64))
        assert_close(got.numpy(), expected.astype(np.float64), scale, name, rtol=1e-5)
    untouched = np.setdiff1d(np.arange(num_rows), rows)
    assert np.array_equal(var.numpy()[untouched], var0[untouched], equal_nan=True)
    assert np.array_equal(v.numpy()[untouched], v0[untouched], equal_nan=True)
    return None


ROWWISE_HYPER = ("learning_rate", "beta_2", "epsilon", "step")


ASSIGN_ROWS_MUTATIONS = ("start", "width", "values-rank", "var-rank", "var-dtype", "not-variable")


def fuzz_assign_rows(rng):
    """Rows written in place: exactly the block changes, bit for bit; a named error otherwise."""
    mutation = pick(rng, ASSIGN_ROWS_MUTATIONS)
    num_rows, dim = int(rng.integers(0, 9)), int(rng.integers(0, 6))
    count = int(rng.integers(0, num_rows + 1))
    start = int(rng.integers(0, num_rows - count + 1))
    var0, values = floats(rng, (num_rows, dim)), floats(rng, (count, dim))
    var = tf.Variable(var0)
    if mutation is not None:
        if mutation == "start":
            start = int(rng.choice([-1, num_rows - count + 1, INT32_MIN, 2**40]))
        elif mutation == "width":
            values = floats(rng, (count, dim + int(rng.choice([-1, 1, 3] if dim else [1, 3]))))
        elif mutation == "values-rank":
            values = values.reshape(-1)
        elif mutation == "var-rank":
            var = tf.Variable(var0.reshape(-1))
        elif mutation == "var-dtype":
            var = tf.Variable(var0.astype(np.float64))
        elif mutation == "not-variable":
            var = tf.constant(var0)
        rejects(lambda: maybe_graph(rng, lambda: tf_lsh_ops.assign_rows(var, start, values)), var)
        return mutation
    maybe_graph(rng, lambda: tf_lsh_ops.assign_rows(var, start, values))
    want = var0.copy()
    want[start : start + count] = values
    assert np.array_equal(var.numpy(), want, equal_nan=True)
    return None


test_fuzz = fuzz_test(
    __file__,
    {
        "sparse_adam_apply": fuzz_sparse_adam,
        "sparse_rowwise_rmsprop_apply": fuzz_sparse_rowwise_rmsprop,
        "assign_rows": fuzz_assign_rows,
    },
)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
