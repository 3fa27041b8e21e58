"""Fuzz of sparse_gather_matmul (forward, gradient, tensors and resource variables; the raw
gradient op with a broken grouping), of sparse_gather_matmul_adam, the fused backward + Adam
(with or without first moments), and of matmul_top_k. fuzz_common.py describes the calls and
the TF_LSH_FUZZ_* variables."""

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
    wrong_rank,
)
from lsh_references import INT32_MAX, reference_gather

import tf_lsh_ops
from tf_lsh_ops._loader import ops

GATHER_MUTATIONS = (
    "rank-inputs",
    "rank-weights",
    "rank-biases",
    "rank-indices",
    "dim",
    "rows",
    "batch",
    "index",
    "dtype",
    "grad-shape",
    "grouping",
)


def fuzz_gather(rng):
    mutation = pick(rng, GATHER_MUTATIONS)
    low = 1 if mutation in ("index", "grad-shape", "grouping") else 0
    batch, dim = int(rng.integers(low, 6)), int(rng.integers(0, 9))
    num_neurons, active = int(rng.integers(1, 12)), int(rng.integers(low, 7))
    rate = special_rate(rng)
    x, w = floats(rng, (batch, dim), rate), floats(rng, (num_neurons, dim), rate)
    b, g = floats(rng, (num_neurons,), rate), floats(rng, (batch, active), rate)
    idx = rng.integers(-1, num_neurons, (batch, active)).astype(np.int32)
    use_variables = rng.random() < 0.4
    args = dict(inputs=x, weights=w, biases=b, indices=idx)
    if mutation is not None:
        if mutation.startswith("rank-"):
            name = mutation[5:]
            args[name] = wrong_rank(rng, args[name])
        elif mutation == "dim":
            args["inputs"] = floats(rng, (batch, dim + int(rng.integers(1, 4))))
        elif mutation == "rows":
            args["biases"] = floats(rng, (num_neurons + int(rng.choice([-1, 1])),))
        elif mutation == "batch":  # neither the batch nor 1 (a set shared by the batch)
            args["indices"] = np.zeros((batch + 2 if batch == 0 else batch + 1, active), np.int32)
        elif mutation == "index":
            bad = [num_neurons, num_neurons + 7, -2, INT32_MIN, INT32_MAX]
            idx.reshape(-1)[rng.integers(idx.size)] = rng.choice(bad)
        elif mutation == "dtype":
            name = str(rng.choice(["inputs", "weights", "biases", "indices"]))
            args[name] = args[name].astype(np.int64 if name == "indices" else np.float64)
        if mutation in ("grad-shape", "grouping"):  # the raw gradient op
            idx[0, 0] = 0
            grouping = [t.numpy() for t in ops.tf_lsh_sparse_gather_matmul(x, w, b, idx)[1:]]
            if mutation == "grad-shape":
                wrong = [wrong_rank(rng, g), np.zeros((batch + 1, active), np.float32)]
                g = wrong[int(rng.integers(2))]
            else:
                corrupt_grouping(rng, *grouping, num_neurons, batch * active)
            rejects(lambda: ops.tf_lsh_sparse_gather_matmul_grad(x, w, *grouping, g, idx))
            return mutation
        weights, biases = args["weights"], args["biases"]
        if use_variables and weights.dtype == biases.dtype:
            weights, biases = tf.Variable(weights), tf.Variable(biases)
        rejects(
            lambda: maybe_graph(
                rng,
                lambda: tf_lsh_ops.sparse_gather_matmul(
                    args["inputs"], weights, biases, args["indices"]
                ),
            ),
            *[v for v in (weights, biases) if isinstance(v, tf.Variable)],
        )
        return mutation

    if use_variables:
        weights, biases = tf.Variable(w), tf.Variable(b)
    else:
        weights, biases = tf.constant(w), tf.constant(b)
    inputs = tf.constant(x)

    def forward_and_grads():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            if not use_variables:
                tape.watch([weights, biases])
            out = tf_lsh_ops.sparse_gather_matmul(inputs, weights, biases, idx)
            loss = tf.reduce_sum(out * g)
        dx, dw, db = tape.gradient(loss, [inputs, weights, biases])
        return out, dx, dw.indices, dw.values, db.indices, db.values, dw.dense_shape

    got = [t.numpy() for t in maybe_graph(rng, forward_and_grads)]
    (out, out_s), (dx, dx_s), rows, (dw, dw_s), (db, db_s) = reference_gather(x, w, b, idx, g)
    assert_close(got[0], out, out_s, "output")
    assert_close(got[1], dx, dx_s, "grad_inputs")
    assert np.array_equal(got[2], rows) and np.array_equal(got[4], rows), (got[2], rows)
    assert_close(got[3], dw, dw_s, "grad_weights")
    assert_close(got[5], db, db_s, "grad_biases")
    assert tuple(got[6]) == w.shape
    return None


def corrupt_grouping(rng, rows, row_splits, positions, num_neurons, num_slots):
    """Breaks the forward op's grouping (rows, row_splits, positions) in place, one way."""
    kind = int(rng.integers(4))
    if kind == 0:  # a neuron out of range, or rows not increasing
        rows[rng.integers(len(rows))] = rng.choice([num_neurons, -1, INT32_MAX, INT32_MIN])
    elif kind == 1:  # splits not starting at 0, not ending at len(positions), not increasing
        i = int(rng.choice([0, len(row_splits) - 1]))
        row_splits[i] += rng.choice([-1, 1])
    elif kind == 2:
        positions[rng.integers(len(positions))] = rng.choice([num_slots, -1, INT32_MAX])
    elif len(rows) > 1:
        rows[1] = rows[0]
    else:
        row_splits[1] = row_splits[0]


GATHER_ADAM_MUTATIONS = ("moment-shape", "grouping", "grad-shape", "indices-batch")


def fuzz_gather_adam(rng):
    """The fused backward + Adam: bit for bit the unfused path when valid; rejected (variables
    untouched) when not."""
    mutation = pick(rng, GATHER_ADAM_MUTATIONS)
    batch, dim = int(rng.integers(1, 6)), int(rng.integers(1, 20))
    num_neurons, active = int(rng.integers(1, 30)), int(rng.integers(1, 8))
    shared = rng.random() < 0.3
    idx = rng.integers(-1, num_neurons, (1 if shared else batch, active)).astype(np.int32)
    idx[0, 0] = 0  # a grouping with at least one row, to corrupt
    x = floats(rng, (batch, dim))
    grad = floats(rng, (batch, active))
    state = [floats(rng, (num_neurons, dim)), floats(rng, (num_neurons,))]
    state += [floats(rng, (num_neurons, dim)), rng.uniform(0, 1, (num_neurons, dim))]
    state += [floats(rng, (num_neurons,)), rng.uniform(0, 1, (num_neurons,))]
    state = [a.astype(np.float32) for a in state]
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3)
    if rng.random() < 0.5:  # no first moments (beta_1 = 0): the NoMomentum op
        state[2] = state[4] = None
        hyper["beta_1"] = 0.0
    fused = [None if a is None else tf.Variable(a) for a in state]
    w, b, *moments = fused
    _, grouping = tf_lsh_ops.sparse_gather_matmul_grouped(x, w, b, idx)
    grouping = [t.numpy() for t in grouping]
    indices = idx
    if mutation == "moment-shape":
        i = int(rng.choice([i for i, m in enumerate(moments) if m is not None]))
        moments[i] = tf.Variable(
            floats(rng, (num_neurons + 1, dim) if i < 2 else (num_neurons + 1,))
        )
    elif mutation == "grouping":
        corrupt_grouping(rng, *grouping, num_neurons, idx.size)
    elif mutation == "grad-shape":
        grad = floats(rng, (batch, active + 1))
    elif mutation == "indices-batch":
        indices = rng.integers(0, num_neurons, (batch + 1, active)).astype(np.int32)
    call = lambda: tf_lsh_ops.sparse_gather_matmul_adam(  # noqa: E731
        x, w, b, indices, grouping, grad, moments, **hyper
    )
    if mutation is not None:
        rejects(call, *(v for v in fused if v is not None))
        return mutation
    fused_dx = call().numpy()
    plain = [None if a is None else tf.Variable(a) for a in state]
    with tf.GradientTape() as tape:
        x_t = tf.constant(x)
        tape.watch(x_t)
        out = tf_lsh_ops.sparse_gather_matmul(x_t, plain[0], plain[1], idx)
    dx, dw, db = tape.gradient(out, [x_t, plain[0], plain[1]], output_gradients=grad)
    tf_lsh_ops.sparse_adam_apply(plain[0], plain[2], plain[3], dw, **hyper)
    tf_lsh_ops.sparse_adam_apply(plain[1], plain[4], plain[5], db, **hyper)
    assert np.array_equal(fused_dx, dx.numpy(), equal_nan=True)
    for a, c in zip(plain, fused, strict=True):
        assert a is c or np.array_equal(a.numpy(), c.numpy(), equal_nan=True)
    return None


TOP_K_MUTATIONS = ("queries-rank", "keys-dim", "biases-length", "k-range", "dtype")


def fuzz_matmul_top_k(rng):
    """matmul_top_k on small-integer data (exact scores, many ties), now and then NaN or
    +-Inf: ids by decreasing score, ties and NaN (as -inf) to the lower id, as NumPy sorts
    them; malformed calls rejected."""
    mutation = pick(rng, TOP_K_MUTATIONS)
    batch, dim, units = int(rng.integers(0, 6)), int(rng.integers(0, 5)), int(rng.integers(1, 40))
    k = int(rng.integers(1, units + 1))

    def small_integers(shape):
        x = rng.integers(-2, 3, shape).astype(np.float32)
        mask = rng.random(shape) < special_rate(rng) / 4
        x[mask] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), int(mask.sum()))
        return x

    queries, keys, biases = small_integers((batch, dim)), small_integers((units, dim)), None
    biases = small_integers((units,))
    if mutation == "queries-rank":
        queries = wrong_rank(rng, queries)
    elif mutation == "keys-dim":
        keys = small_integers((units, dim + 1))
    elif mutation == "biases-length":
        biases = small_integers((units + 1,))
    elif mutation == "k-range":
        k = [0, units + 1, -1][int(rng.integers(3))]
    elif mutation == "dtype":
        queries = queries.astype(np.float64)
    call = lambda: tf_lsh_ops.matmul_top_k(queries, keys, biases, k)  # noqa: E731
    if mutation is not None:
        rejects(lambda: maybe_graph(rng, call))
        return mutation
    got = maybe_graph(rng, call).numpy()
    with np.errstate(invalid="ignore"):
        scores = queries.astype(np.float64) @ keys.astype(np.float64).T + biases
    scores = np.where(np.isnan(scores), -np.inf, scores)
    ids = np.arange(units)
    want = np.array([np.lexsort((ids, -row))[:k] for row in scores], np.int32).reshape(batch, k)
    assert np.array_equal(got, want), (got, want)
    return None


test_fuzz = fuzz_test(
    __file__,
    {
        "sparse_gather_matmul": fuzz_gather,
        "sparse_gather_matmul_adam": fuzz_gather_adam,
        "matmul_top_k": fuzz_matmul_top_k,
    },
)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
