"""Fuzz of the sparse input paths: sparse_input_matmul (and its gradient),
sparse_input_products, sparse_input_matmul_adam, sparse_input_gather_matmul_lazy_adam,
sparse_input_gather_matmul_lazy_sgd and
multi_label_batch.
fuzz_common.py describes the calls and the TF_LSH_FUZZ_* variables."""

import sys

import numpy as np
import pytest
import tensorflow as tf
from fuzz_common import (
    assert_close,
    floats,
    fuzz_test,
    maybe_graph,
    pick,
    rejects,
    special_rate,
    wrong_rank,
)
from lsh_references import reference_adam

import tf_lsh_ops
from tf_lsh_ops._loader import ops

SPARSE_INPUT_MUTATIONS = (
    "kernel-rank",
    "kernel-rows",
    "entry-outside",
    "dense-shape",
    "indices-rank",
    "dtype",
    "grad-shape",
)


def _sparse_input_case(rng):
    """(batch, num_features, units, entries, values, dense_shape) of a random first layer's
    input: entries in any order, repeats allowed (they add up), empty batches too."""
    batch, num_features = int(rng.integers(0, 6)), int(rng.integers(1, 12))
    units, nnz = int(rng.integers(0, 9)), int(rng.integers(0, 16))
    at = np.stack([rng.integers(0, max(batch, 1), nnz), rng.integers(0, num_features, nnz)], 1)
    at = at[: nnz if batch else 0].astype(np.int64)
    values = floats(rng, (len(at),))
    return batch, num_features, units, at, values, np.array([batch, num_features], np.int64)


# Malformed SparseTensor parts that both sparse-input products meet with the same checks.
MALFORMED_SPARSE_INPUTS = ("entry-outside", "dense-shape", "indices-rank")


def _malformed_sparse_input(rng, mutation, at, values, shape):
    """`(at, values, shape)` with one part malformed as `mutation` says: an entry outside the
    dense shape, a dense shape not `[batch >= 0, features]`, or indices not of rank 2."""
    batch, num_features = (int(n) for n in shape)
    if mutation == "entry-outside":
        at = np.concatenate([at, [[int(rng.integers(0, 9)), num_features]]]).astype(np.int64)
        at[-1] = rng.choice([[batch, 0], [0, num_features], [-1, 0], [0, -1]])
        values = floats(rng, (len(at),))
    elif mutation == "dense-shape":
        wrong_shapes = [np.array([-1, num_features]), np.array([batch], np.int64)]
        shape = wrong_shapes[int(rng.integers(2))]
    elif mutation == "indices-rank":
        at = wrong_rank(rng, at)
    return at, values, shape


def fuzz_sparse_input_matmul(rng):
    mutation = pick(rng, SPARSE_INPUT_MUTATIONS)
    batch, num_features, units, at, values, shape = _sparse_input_case(rng)
    kernel = floats(rng, (num_features, units))
    g = floats(rng, (batch, units))
    if mutation is not None:
        if mutation == "kernel-rank":
            kernel = wrong_rank(rng, kernel)
        elif mutation == "kernel-rows":
            kernel = floats(rng, (num_features + int(rng.choice([-1, 1, 5])), units))
        elif mutation in MALFORMED_SPARSE_INPUTS:
            at, values, shape = _malformed_sparse_input(rng, mutation, at, values, shape)
        elif mutation == "dtype":
            kernel = kernel.astype(np.float64)
        if mutation == "grad-shape":  # the raw gradient op
            wrong = [wrong_rank(rng, g), np.zeros((batch + 1, units), np.float32)]
            call = lambda: ops.tf_lsh_sparse_input_matmul_grad(  # noqa: E731
                at, values, shape, kernel, wrong[int(rng.integers(2))]
            )
        elif mutation == "dtype":  # the public function checks dtypes (the raw op would cast)
            call = lambda: tf_lsh_ops.sparse_input_matmul(  # noqa: E731
                tf.SparseTensor(at, values, shape), kernel
            )
        else:  # the raw op, so that its own checks meet the malformed parts
            call = lambda: maybe_graph(  # noqa: E731
                rng, lambda: ops.tf_lsh_sparse_input_matmul(at, values, shape, kernel)
            )
        rejects(call)
        return mutation

    values_t = tf.constant(values)
    kernel_t = tf.Variable(kernel) if rng.random() < 0.4 else tf.constant(kernel)

    def forward_and_grads():
        with tf.GradientTape() as tape:
            tape.watch([values_t, kernel_t])
            out = tf_lsh_ops.sparse_input_matmul(tf.SparseTensor(at, values_t, shape), kernel_t)
            loss = tf.reduce_sum(out * g)
        grad_values, grad_kernel = tape.gradient(loss, [values_t, kernel_t])
        return out, grad_values, tf.convert_to_tensor(grad_kernel)

    out, grad_values, grad_kernel = [t.numpy() for t in maybe_graph(rng, forward_and_grads)]
    dense = np.zeros((batch, num_features))
    np.add.at(dense, (at[:, 0], at[:, 1]), values.astype(np.float64))
    k64, g64 = kernel.astype(np.float64), g.astype(np.float64)
    scale_out = np.abs(dense) @ np.abs(k64) + 1
    assert_close(out, dense @ k64, scale_out, "output", rtol=1e-4)
    want_values = (g64 @ k64.T)[at[:, 0], at[:, 1]] if len(at) else np.zeros(0)
    scale_values = (np.abs(g64) @ np.abs(k64.T))[at[:, 0], at[:, 1]] if len(at) else 0
    assert_close(grad_values, want_values, scale_values + 1, "grad_values", rtol=1e-4)
    assert_close(
        grad_kernel, dense.T @ g64, np.abs(dense.T) @ np.abs(g64) + 1, "grad_kernel", rtol=1e-4
    )
    return None


SPARSE_INPUT_PRODUCTS_MUTATIONS = (
    "weights-rank",
    "weights-columns",
    "entry-outside",
    "dense-shape",
    "indices-rank",
    "dtype",
)


def fuzz_sparse_input_products(rng):
    """Sparse inputs times every unit of a neuron-major kernel: the dense product when valid,
    a named error otherwise."""
    mutation = pick(rng, SPARSE_INPUT_PRODUCTS_MUTATIONS)
    batch, num_features, units, at, values, shape = _sparse_input_case(rng)
    weights = floats(rng, (units, num_features))
    if mutation is not None:
        if mutation == "weights-rank":
            weights = wrong_rank(rng, weights)
        elif mutation == "weights-columns":
            weights = floats(rng, (units, num_features + int(rng.choice([-1, 1, 5]))))
        elif mutation in MALFORMED_SPARSE_INPUTS:
            at, values, shape = _malformed_sparse_input(rng, mutation, at, values, shape)
        if mutation == "dtype":  # the public function checks dtypes (the raw op would cast)
            call = lambda: tf_lsh_ops.sparse_input_products(  # noqa: E731
                tf.SparseTensor(at, values, shape), weights.astype(np.float64)
            )
        else:  # the raw op, so that its own checks meet the malformed parts
            call = lambda: maybe_graph(  # noqa: E731
                rng, lambda: ops.tf_lsh_sparse_input_products(at, values, shape, weights)
            )
        rejects(call)
        return mutation

    weights_t = tf.Variable(weights) if rng.random() < 0.4 else tf.constant(weights)
    out = maybe_graph(
        rng,
        lambda: tf_lsh_ops.sparse_input_products(tf.SparseTensor(at, values, shape), weights_t),
    ).numpy()
    dense = np.zeros((batch, num_features))
    np.add.at(dense, (at[:, 0], at[:, 1]), values.astype(np.float64))
    w64 = weights.astype(np.float64)
    assert out.shape == (batch, units)
    assert_close(out, dense @ w64.T, np.abs(dense) @ np.abs(w64.T) + 1, "output", rtol=1e-4)
    return None


SPARSE_INPUT_ADAM_MUTATIONS = (
    "moment-shape",
    "grad-shape",
    "kernel-rows",
    "entry-outside",
    "dense-shape",
)


def fuzz_sparse_input_adam(rng):
    """The first layer's fused gradient + Adam: bit for bit the unfused path when valid;
    rejected (variables untouched) when not."""
    mutation = pick(rng, SPARSE_INPUT_ADAM_MUTATIONS)
    batch, num_features, units, at, values, shape = _sparse_input_case(rng)
    grad = floats(rng, (batch, units))
    state = [floats(rng, (num_features, units)), floats(rng, (num_features, units))]
    state = [a.astype(np.float32) for a in state]
    state.append(rng.uniform(0, 1, (num_features, units)).astype(np.float32))
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=2)
    if rng.random() < 0.5:  # no first moment (beta_1 = 0): the NoMomentum op
        state[1], hyper["beta_1"] = None, 0.0
    fused = [None if a is None else tf.Variable(a) for a in state]
    kernel, moments = fused[0], list(fused[1:])
    if mutation == "moment-shape":
        i = int(rng.choice([i for i, m in enumerate(moments) if m is not None]))
        moments[i] = tf.Variable(floats(rng, (num_features + 1, units)))
    elif mutation == "grad-shape":
        grad = [wrong_rank(rng, grad), floats(rng, (batch + 1, units))][int(rng.integers(2))]
    elif mutation == "kernel-rows":
        kernel = tf.Variable(floats(rng, (num_features + 1, units)))
        moments = [
            None if m is None else tf.Variable(floats(rng, (num_features + 1, units)))
            for m in moments
        ]
    elif mutation == "entry-outside":
        at = np.concatenate([at, [[0, num_features]]]).astype(np.int64)
        values = floats(rng, (len(at),))
    elif mutation == "dense-shape":
        shape = np.array([-1, num_features], np.int64)
    call = lambda: tf_lsh_ops.sparse_input_matmul_adam(  # noqa: E731
        tf.SparseTensor(at, values, shape), kernel, grad, moments, **hyper
    )
    if mutation is not None:
        variables = [v for v in (kernel, *moments, *fused) if v is not None]
        rejects(lambda: maybe_graph(rng, call), *variables)
        return mutation
    maybe_graph(rng, call)
    plain = [None if a is None else tf.Variable(a) for a in state]
    with tf.GradientTape() as tape:
        out = tf_lsh_ops.sparse_input_matmul(tf.SparseTensor(at, values, shape), plain[0])
    dw = tape.gradient(out, plain[0], output_gradients=grad)
    tf_lsh_ops.sparse_adam_apply(*plain, dw, **hyper)
    for a, c in zip(plain, fused, strict=True):
        assert a is c or np.array_equal(a.numpy(), c.numpy(), equal_nan=True)
    return None


SPARSE_INPUT_LAZY_ADAM_MUTATIONS = (
    "moment-shape",
    "grad-shape",
    "index-outside",
    "weights-columns",
    "entry-outside",
    "dense-shape",
)


def fuzz_sparse_input_gather_lazy_adam(rng):
    """The gather-matmul's backward with lazy Adam per weight: the unfused gradients of the
    values and biases, and one Adam step on exactly the weights of active units on features
    of their examples (NumPy), when valid; rejected (variables untouched) when not."""
    return _fuzz_sparse_input_gather_lazy(rng, "adam")


def fuzz_sparse_input_gather_lazy_sgd(rng):
    """The same backward with lazy SGD per weight (no moments)."""
    return _fuzz_sparse_input_gather_lazy(rng, "sgd")


def _fuzz_sparse_input_gather_lazy(rng, rule):
    adam = rule == "adam"
    mutation = pick(
        rng, [m for m in SPARSE_INPUT_LAZY_ADAM_MUTATIONS if adam or m != "moment-shape"]
    )
    batch, dim, _, at, values, shape = _sparse_input_case(rng)
    num_neurons, active = int(rng.integers(1, 9)), int(rng.integers(0, 5))
    indices = rng.integers(-1, num_neurons, (batch, active)).astype(np.int32)
    grad = floats(rng, (batch, active), special=special_rate(rng))
    state = [floats(rng, (num_neurons, dim)), floats(rng, (num_neurons, dim))]
    state.append(rng.uniform(0, 1, (num_neurons, dim)).astype(np.float32))
    if not adam:
        state = state[:1]
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3)
    fused = [tf.Variable(a) for a in state]
    weights, moments = fused[0], list(fused[1:])
    if mutation == "moment-shape":
        moments[int(rng.integers(2))] = tf.Variable(floats(rng, (num_neurons, dim + 1)))
    elif mutation == "grad-shape":
        grad = [wrong_rank(rng, grad), floats(rng, (batch, active + 1))][int(rng.integers(2))]
    elif mutation == "index-outside":
        indices = np.concatenate([indices, np.full((batch, 1), num_neurons, np.int32)], 1)
        grad = floats(rng, indices.shape)
        if batch == 0:  # no index to be outside: make the batch non-empty
            indices, grad = np.full((1, 1), num_neurons, np.int32), floats(rng, (1, 1))
            shape = np.array([1, dim], np.int64)
    elif mutation == "weights-columns":
        weights = tf.Variable(floats(rng, (num_neurons, dim + 1)))
        moments = [tf.Variable(floats(rng, (num_neurons, dim + 1))) for _ in moments]
    elif mutation == "entry-outside":
        at = np.concatenate([at, [[0, dim]]]).astype(np.int64)
        values = floats(rng, (len(at),))
        if batch == 0:
            shape = np.array([1, dim], np.int64)
            indices, grad = np.zeros((1, active), np.int32), floats(rng, (1, active))
    elif mutation == "dense-shape":
        shape = np.array([-1, dim], np.int64)

    hogwild = not adam and bool(rng.integers(2))

    def call():
        sparse = tf.SparseTensor(at, values, shape)
        if adam:
            return tf_lsh_ops.sparse_input_gather_matmul_lazy_adam(
                sparse, weights, indices, grad, moments, **hyper
            )
        return tf_lsh_ops.sparse_input_gather_matmul_lazy_sgd(
            sparse, weights, indices, grad, learning_rate=hyper["learning_rate"], hogwild=hogwild
        )

    if mutation is not None:
        rejects(lambda: maybe_graph(rng, call), weights, *moments, *fused)
        return mutation
    got_values, got_bias = maybe_graph(rng, call)

    plain_values, plain_weights = tf.Variable(values), tf.Variable(state[0])
    biases = tf.Variable(np.zeros(num_neurons, np.float32))
    with tf.GradientTape() as tape:
        sparse = tf.SparseTensor(at, plain_values, shape)
        out = tf_lsh_ops.sparse_input_gather_matmul(sparse, plain_weights, biases, indices)
    want_values, dw, db = tape.gradient(
        out, [plain_values, plain_weights, biases], output_gradients=grad
    )
    if want_values is None:  # no entries or no active unit: nothing reaches the values
        want_values = np.zeros(len(at), np.float32)
    scale = np.abs(grad).sum() * (np.abs(state[0]).max(initial=0) + 1) + 1
    # A Hogwild pass equals the grouped one when no weight is updated twice (by two examples,
    # a unit twice in an example or a feature twice in a row): a later read would see the
    # earlier update, in whatever order they ran.
    pairs = [
        (unit, feature)
        for row, ids in enumerate(indices)
        for unit in ids[ids >= 0].tolist()
        for feature in at[at[:, 0] == row, 1].tolist()
    ]
    exact = not hogwild or len(pairs) == len(set(pairs))
    if exact:
        assert_close(got_values.numpy(), np.asarray(want_values, np.float64), scale, "grad_values")
    want_bias = np.zeros(num_neurons) if db is None else tf.convert_to_tensor(db).numpy()
    got_bias = tf.math.unsorted_segment_sum(got_bias.values, got_bias.indices, num_neurons)
    assert_close(got_bias.numpy(), np.asarray(want_bias, np.float64), scale, "grad_bias")
    touched = np.zeros((num_neurons, dim), bool)
    for row, ids in enumerate(indices):
        features = at[(at[:, 0] == row) & (values != 0), 1]  # a zero value has no gradient
        for unit in ids[ids >= 0]:
            touched[unit, features] = True
    dw = np.zeros(state[0].shape, np.float32) if dw is None else tf.convert_to_tensor(dw).numpy()
    if adam:
        cells = reference_adam(
            *(a[touched][:, None] for a in state),
            np.arange(touched.sum()),
            dw[touched][:, None],
            lr=0.01,
            beta1=0.9,
            beta2=0.999,
            eps=1e-7,
            step=3,
        )
        cells = [cell[:, 0] for cell in cells]
    else:
        cells = [state[0][touched] - np.float32(0.01) * dw[touched]]
    for name, variable, before, cell in zip(
        ("weights", "m", "v"), fused, state, cells, strict=False
    ):
        want = before.copy()
        want[touched] = cell
        got = variable.numpy()
        assert np.array_equal(got[~touched], before[~touched], equal_nan=True), name
        if exact:
            assert_close(got, want.astype(np.float64), np.abs(want) + 1, name)
    return None


MULTI_LABEL_BATCH_MUTATIONS = (
    "row-outside",
    "feature-outside",
    "splits-decreasing",
    "splits-past-end",
    "too-many-labels",
    "values-length",
    "splits-length",
    "rank",
)


def fuzz_multi_label_batch(rng):
    """A batch gathered from CSR arrays: the NumPy gather when valid; rejected when not."""
    mutation = pick(rng, MULTI_LABEL_BATCH_MUTATIONS)
    examples, num_features = int(rng.integers(1, 8)), int(rng.integers(1, 20))
    feature_counts = rng.integers(0, 5, examples)
    label_counts = rng.integers(0, 4, examples)
    splits = np.concatenate([[0], np.cumsum(feature_counts)]).astype(np.int64)
    label_splits = np.concatenate([[0], np.cumsum(label_counts)]).astype(np.int64)
    ids = rng.integers(0, num_features, splits[-1]).astype(np.int64)
    values = floats(rng, (len(ids),))
    labels = rng.integers(0, 1000, label_splits[-1]).astype(np.int32)
    rows = rng.integers(0, examples, int(rng.integers(0, 9))).astype(np.int64)
    max_labels = int(label_counts.max()) + int(rng.integers(0, 3))
    if mutation is not None:
        rows = np.append(rows, int(rng.integers(0, examples)))  # at least one row to break
        row = rows[-1]
        if mutation == "row-outside":
            rows[-1] = rng.choice([-1, examples, 2**40])
        elif mutation == "feature-outside":
            splits[row + 1 :] += 1
            ids = np.insert(ids, splits[row], rng.choice([-1, num_features]))
            values = np.insert(values, splits[row], 1.0)
        elif mutation == "splits-decreasing":
            splits[row + 1] = splits[row] - 1
        elif mutation == "splits-past-end":
            splits[row + 1 :] = len(ids) + 1
        elif mutation == "too-many-labels":
            label_splits[row + 1 :] += max_labels + 1
            labels = np.concatenate([labels, np.zeros(max_labels + 1, np.int32)])
        elif mutation == "values-length":
            values = np.append(values, 1.0)
        elif mutation == "splits-length":
            label_splits = label_splits[:-1]
        elif mutation == "rank":
            rows = wrong_rank(rng, rows)

    def call():
        return tf_lsh_ops.multi_label_batch(
            splits,
            ids,
            values,
            label_splits,
            labels,
            rows,
            num_features=num_features,
            max_labels=max_labels,
        )

    if mutation is not None:
        rejects(lambda: maybe_graph(rng, call))
        return mutation
    x, y = maybe_graph(rng, call)
    want_ids = [ids[splits[r] : splits[r + 1]] for r in rows]
    want_rows = np.repeat(np.arange(len(rows)), [len(w) for w in want_ids]).astype(np.int64)
    want_ids = np.concatenate(want_ids + [np.zeros(0, np.int64)])
    assert np.array_equal(x.indices.numpy(), np.stack([want_rows, want_ids], 1).reshape(-1, 2))
    want_values = [values[splits[r] : splits[r + 1]] for r in rows]
    assert np.array_equal(
        x.values.numpy(), np.concatenate(want_values + [np.zeros(0, np.float32)]), equal_nan=True
    )
    assert np.array_equal(x.dense_shape.numpy(), [len(rows), num_features])
    for i, r in enumerate(rows):
        row_labels = labels[label_splits[r] : label_splits[r + 1]]
        want = np.pad(row_labels, (0, max_labels - len(row_labels)), constant_values=-1)
        assert np.array_equal(y.numpy()[i], want)
    return None


test_fuzz = fuzz_test(
    __file__,
    {
        "sparse_input_matmul": fuzz_sparse_input_matmul,
        "sparse_input_products": fuzz_sparse_input_products,
        "sparse_input_matmul_adam": fuzz_sparse_input_adam,
        "sparse_input_gather_matmul_lazy_adam": fuzz_sparse_input_gather_lazy_adam,
        "sparse_input_gather_matmul_lazy_sgd": fuzz_sparse_input_gather_lazy_sgd,
        "multi_label_batch": fuzz_multi_label_batch,
    },
)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
