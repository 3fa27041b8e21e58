"""Tests of `tf_lsh_ops.sparse_gather_matmul`: values, gradients, errors, graphs and Keras.

Contract under test: inputs float32 [B, D], weights float32 [N, D] (neuron-major), biases
float32 [N], indices int32 [B, K] with -1 meaning "no neuron" (output 0, no gradient);
out[b, k] = dot(inputs[b], weights[indices[b, k]]) + biases[indices[b, k]]. The gradient is
dense for inputs and a tf.IndexedSlices over the distinct rows used for weights and biases.
"""

import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

try:
    import tf_lsh_ops  # noqa: E402
except ModuleNotFoundError:  # Not installed: use the source tree this file belongs to.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tf_lsh_ops  # noqa: E402

from lsh_references import reference_adam  # noqa: E402

from tf_lsh_ops._loader import op_type  # noqa: E402

sparse_gather_matmul = tf_lsh_ops.sparse_gather_matmul

OP = "SparseGatherMatmul"

# (batch B, dim D, num_neurons N, active K).
SHAPES = [
    pytest.param(1, 7, 5, 1, id="B1-K1-D7"),
    pytest.param(1, 1, 3, 4, id="B1-D1"),
    pytest.param(2, 13, 4, 6, id="D13-K>N"),
    pytest.param(4, 128, 40, 8, id="D128"),
    pytest.param(5, 130, 20, 7, id="D130"),
    pytest.param(3, 1, 2, 5, id="D1-N2"),
    pytest.param(6, 33, 9, 3, id="D33"),
    pytest.param(3, 0, 4, 2, id="D0"),
    pytest.param(256, 128, 4096, 32, id="large-sharded"),
    pytest.param(64, 37, 16, 48, id="heavy-duplicates"),
    pytest.param(8, 2, (1 << 22) + 5, 5, id="ids-need-23-bits"),
]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def make_indices(rng, batch, num_neurons, active):
    """Random ids in [0, N) with -1 padding, duplicates within and across rows, an all -1 row."""
    idx = rng.integers(0, num_neurons, size=(batch, active)).astype(np.int32)
    idx[rng.random((batch, active)) < 0.25] = -1
    if batch * active == 0:
        return idx
    top = num_neurons - 1
    idx[0, 0] = top  # the largest valid id
    if active >= 2:
        idx[0, 1] = top  # duplicate within a row
    if active >= 3:
        idx[0, 2] = -1  # padding
    if batch >= 2:
        idx[batch - 1, active - 1] = top  # the same id in another row
    if batch >= 3:
        idx[1, :] = -1  # a row with no neuron at all
    if batch >= 4:
        idx[2, 0] = 0  # the smallest valid id
    return idx


def make_case(seed, batch, dim, num_neurons, active):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    w = rng.standard_normal((num_neurons, dim)).astype(np.float32)
    b = rng.standard_normal(num_neurons).astype(np.float32)
    idx = make_indices(rng, batch, num_neurons, active)
    return x, w, b, idx


def numpy_forward(x, w, b, idx):
    """float64 reference of the forward pass."""
    mask = idx >= 0
    ids = np.where(mask, idx, 0)
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    out = np.einsum("bd,bkd->bk", x64, w64[ids]) + b64[ids]
    return np.where(mask, out, 0.0)


def numpy_grads(x, w, idx, grad_out):
    """float64 reference gradients (dense) of sum(out * grad_out)."""
    mask = idx >= 0
    ids = np.where(mask, idx, 0)
    g = np.where(mask, grad_out.astype(np.float64), 0.0)
    dx = np.einsum("bk,bkd->bd", g, w.astype(np.float64)[ids])
    dw = np.zeros(w.shape, np.float64)
    db = np.zeros(w.shape[0], np.float64)
    rows_b, rows_k = np.nonzero(mask)
    np.add.at(dw, idx[rows_b, rows_k], g[rows_b, rows_k, None] * x[rows_b].astype(np.float64))
    np.add.at(db, idx[rows_b, rows_k], g[rows_b, rows_k])
    return dx, dw, db


def reference_forward_tf(x, w, b, idx):
    """The same function built from stock TF ops, for an autodiff reference."""
    ids = tf.maximum(idx, 0)
    mask = tf.cast(idx >= 0, tf.float32)
    out = tf.einsum("bd,bkd->bk", x, tf.gather(w, ids)) + tf.gather(b, ids)
    return out * mask


def forward_and_grads(x, w, b, idx, grad_out):
    """Eager forward and gradients of sum(out * grad_out) w.r.t. inputs, weights, biases."""
    x, w, b = tf.constant(x), tf.constant(w), tf.constant(b)
    with tf.GradientTape() as tape:
        tape.watch([x, w, b])
        out = sparse_gather_matmul(x, w, b, tf.constant(idx))
        loss = tf.reduce_sum(out * grad_out)
    dx, dw, db = tape.gradient(loss, [x, w, b])
    return out, dx, dw, db


# ---------------------------------------------------------------------------------------------
# 1. Forward values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,dim,num_neurons,active", SHAPES)
def test_forward_matches_numpy(batch, dim, num_neurons, active):
    x, w, b, idx = make_case(1, batch, dim, num_neurons, active)
    out = sparse_gather_matmul(x, w, b, idx).numpy()

    assert out.dtype == np.float32
    assert out.shape == (batch, active)
    np.testing.assert_allclose(out, numpy_forward(x, w, b, idx), rtol=1e-4, atol=1e-4)
    # Padding gives exactly zero, not just a small number.
    assert np.all(out[idx == -1] == 0.0)


def test_forward_documented_example():
    x = tf.constant([[1.0, 2.0]])
    w = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = tf.constant([0.0, 0.0, 5.0])
    out = sparse_gather_matmul(x, w, b, tf.constant([[2, -1]]))
    np.testing.assert_array_equal(out.numpy(), [[8.0, 0.0]])


def test_forward_all_padding_is_zero():
    x, w, b, _ = make_case(2, 4, 9, 6, 5)
    idx = np.full((4, 5), -1, np.int32)
    np.testing.assert_array_equal(sparse_gather_matmul(x, w, b, idx).numpy(), np.zeros((4, 5)))


@pytest.mark.parametrize("batch,active", [(0, 3), (4, 0), (0, 0)])
def test_empty_batch_or_active(batch, active):
    dim, num_neurons = 5, 4
    x, w, b, idx = make_case(3, batch, dim, num_neurons, active)
    out, dx, dw, db = forward_and_grads(x, w, b, idx, np.ones((batch, active), np.float32))

    assert out.shape == (batch, active)
    assert dx.shape == (batch, dim)
    np.testing.assert_array_equal(dx.numpy(), np.zeros((batch, dim)))
    for grad, dense_shape in ((dw, (num_neurons, dim)), (db, (num_neurons,))):
        assert isinstance(grad, tf.IndexedSlices)
        assert grad.indices.shape[0] == 0
        assert tuple(grad.dense_shape.numpy()) == dense_shape
        np.testing.assert_array_equal(tf.convert_to_tensor(grad).numpy(), np.zeros(dense_shape))

    # Also with an unknown batch dimension in a graph.
    fn = tf.function(
        sparse_gather_matmul,
        input_signature=[
            tf.TensorSpec([None, dim], tf.float32),
            tf.TensorSpec([num_neurons, dim], tf.float32),
            tf.TensorSpec([num_neurons], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
        ],
    )
    assert fn(x, w, b, idx).shape == (batch, active)


# ---------------------------------------------------------------------------------------------
# 2. Gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,dim,num_neurons,active", SHAPES)
def test_gradients_match_autodiff_reference(batch, dim, num_neurons, active):
    x, w, b, idx = make_case(4, batch, dim, num_neurons, active)
    grad_out = np.random.default_rng(5).standard_normal((batch, active)).astype(np.float32)

    out, dx, dw, db = forward_and_grads(x, w, b, idx, grad_out)

    xt, wt, bt = tf.constant(x), tf.constant(w), tf.constant(b)
    with tf.GradientTape() as tape:
        tape.watch([xt, wt, bt])
        ref_out = reference_forward_tf(xt, wt, bt, tf.constant(idx))
        ref_loss = tf.reduce_sum(ref_out * grad_out)
    ref_dx, ref_dw, ref_db = tape.gradient(ref_loss, [xt, wt, bt])

    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.numpy(), ref_out.numpy(), **tol)
    np.testing.assert_allclose(dx.numpy(), ref_dx.numpy(), **tol)
    np.testing.assert_allclose(
        tf.convert_to_tensor(dw).numpy(), tf.convert_to_tensor(ref_dw).numpy(), **tol
    )
    np.testing.assert_allclose(
        tf.convert_to_tensor(db).numpy(), tf.convert_to_tensor(ref_db).numpy(), **tol
    )

    # And against an independent float64 NumPy reference (duplicates summed, -1 skipped).
    np_dx, np_dw, np_db = numpy_grads(x, w, idx, grad_out)
    np.testing.assert_allclose(dx.numpy(), np_dx, **tol)
    np.testing.assert_allclose(tf.convert_to_tensor(dw).numpy(), np_dw, **tol)
    np.testing.assert_allclose(tf.convert_to_tensor(db).numpy(), np_db, **tol)


@pytest.mark.parametrize("wrt", ["inputs", "weights", "biases"])
def test_gradient_matches_numerical_jacobian(wrt):
    rng = np.random.default_rng(6)
    batch, dim, num_neurons, active = 3, 5, 6, 4
    args = {
        "inputs": tf.constant(rng.uniform(-1, 1, (batch, dim)).astype(np.float32)),
        "weights": tf.constant(rng.uniform(-1, 1, (num_neurons, dim)).astype(np.float32)),
        "biases": tf.constant(rng.uniform(-1, 1, num_neurons).astype(np.float32)),
    }
    # Duplicates within and across rows, padding, an all -1 row, and an unused neuron (4).
    idx = tf.constant([[5, 0, 5, -1], [-1, -1, -1, -1], [2, 3, 0, 1]], tf.int32)

    def f(value):
        call_args = dict(args, **{wrt: value})
        return sparse_gather_matmul(
            call_args["inputs"], call_args["weights"], call_args["biases"], idx
        )

    theoretical, numerical = tf.test.compute_gradient(f, [args[wrt]], delta=1e-2)
    theoretical, numerical = theoretical[0], numerical[0]
    assert theoretical.shape == numerical.shape == (batch * active, args[wrt].shape.num_elements())
    assert np.abs(theoretical).max() > 0.1  # the check is not comparing zeros with zeros
    np.testing.assert_allclose(theoretical, numerical, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "indices",
    [
        pytest.param([[3, 1, 3], [-1, 1, 7], [-1, -1, -1], [0, 7, 3]], id="mixed"),
        pytest.param([[2, 2, 2], [2, 2, 2]], id="one-id-repeated"),
        pytest.param([[-1, -1], [-1, -1]], id="all-padding"),
        pytest.param([[7], [6], [5], [4]], id="all-distinct"),
    ],
)
def test_sparse_gradients_are_indexed_slices_over_used_rows(indices):
    idx = np.array(indices, np.int32)
    batch, active = idx.shape
    dim, num_neurons = 6, 8
    rng = np.random.default_rng(7)
    x = tf.constant(rng.standard_normal((batch, dim)).astype(np.float32))
    w = tf.Variable(rng.standard_normal((num_neurons, dim)).astype(np.float32))
    b = tf.Variable(rng.standard_normal(num_neurons).astype(np.float32))
    grad_out = rng.standard_normal((batch, active)).astype(np.float32)

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(sparse_gather_matmul(x, w, b, idx) * grad_out)
    dw, db = tape.gradient(loss, [w, b])

    used = sorted(set(idx[idx >= 0].tolist()))
    _, np_dw, np_db = numpy_grads(x.numpy(), w.numpy(), idx, grad_out)
    for grad, dense_shape, dense_ref in (
        (dw, (num_neurons, dim), np_dw),
        (db, (num_neurons,), np_db),
    ):
        assert isinstance(grad, tf.IndexedSlices)
        rows = grad.indices.numpy()
        assert len(np.unique(rows)) == len(rows), f"repeated rows {rows}"
        assert -1 not in rows
        assert sorted(rows.tolist()) == used
        assert tuple(grad.dense_shape.numpy()) == dense_shape
        assert grad.values.shape == (len(used),) + dense_shape[1:]
        # Documented by SparseGatherMatmulGrad: the rows are sorted by neuron id.
        np.testing.assert_array_equal(rows, used)
        # Each row holds the sum over all its uses.
        np.testing.assert_allclose(grad.values.numpy(), dense_ref[rows], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(dw.indices.numpy(), db.indices.numpy())


def test_padding_and_unused_rows_are_never_read():
    x, w, b, _ = make_case(11, 4, 10, 8, 3)
    idx = np.array([[0, -1, 2], [-1, -1, -1], [2, 5, -1], [5, 0, 0]], np.int32)
    unused = [1, 3, 4, 6, 7]
    w_poisoned, b_poisoned = w.copy(), b.copy()
    w_poisoned[unused] = np.nan
    b_poisoned[unused] = np.inf
    grad_out = np.random.default_rng(11).standard_normal(idx.shape).astype(np.float32)
    grad_out_poisoned = np.where(idx == -1, np.float32(np.nan), grad_out)

    clean = forward_and_grads(x, w, b, idx, np.where(idx == -1, 0, grad_out).astype(np.float32))
    poisoned = forward_and_grads(x, w_poisoned, b_poisoned, idx, grad_out_poisoned)
    for c, p in zip(clean, poisoned, strict=True):
        c, p = tf.convert_to_tensor(c).numpy(), tf.convert_to_tensor(p).numpy()
        assert np.all(np.isfinite(p))
        np.testing.assert_array_equal(p, c)


# ---------------------------------------------------------------------------------------------
# 3. Bad input
# ---------------------------------------------------------------------------------------------


def _good():
    """A valid call: B=2, D=3, N=4, K=2."""
    return {
        "inputs": np.ones((2, 3), np.float32),
        "weights": np.ones((4, 3), np.float32),
        "biases": np.zeros(4, np.float32),
        "indices": np.array([[0, -1], [3, 3]], np.int32),
    }


def _with(**changes):
    args = _good()
    args.update(changes)
    return args


def _bad_index(value):
    idx = _good()["indices"].copy()
    idx[-1, -1] = value  # the very last element, to catch off-by-one scans
    return _with(indices=idx)


ERROR_CASES = [
    pytest.param(_with(inputs=np.ones((2, 5), np.float32)), ["inputs", "weights"], id="dim"),
    pytest.param(_with(biases=np.zeros(5, np.float32)), ["weights", "biases"], id="rows"),
    pytest.param(_with(inputs=np.ones((3, 3), np.float32)), ["inputs", "indices"], id="batch"),
    pytest.param(_with(inputs=np.ones(3, np.float32)), ["inputs"], id="inputs-rank1"),
    pytest.param(_with(inputs=np.ones((2, 3, 1), np.float32)), ["inputs"], id="inputs-rank3"),
    pytest.param(_with(weights=np.ones(3, np.float32)), ["weights"], id="weights-rank1"),
    pytest.param(_with(weights=np.ones((4, 3, 1), np.float32)), ["weights"], id="weights-rank3"),
    pytest.param(_with(biases=np.float32(0.0)), ["biases"], id="biases-rank0"),
    pytest.param(_with(biases=np.zeros((4, 1), np.float32)), ["biases"], id="biases-rank2"),
    pytest.param(_with(indices=np.array([0, 1], np.int32)), ["indices"], id="indices-rank1"),
    pytest.param(_with(indices=np.zeros((2, 2, 1), np.int32)), ["indices"], id="indices-rank3"),
    pytest.param(_bad_index(4), ["indices"], id="index-eq-N"),
    pytest.param(_bad_index(-2), ["indices"], id="index-minus2"),
    pytest.param(_bad_index(np.iinfo(np.int32).min), ["indices"], id="index-int32-min"),
    pytest.param(_with(indices=np.array([[0, 1], [2, 3]], np.int64)), ["indices"], id="int64"),
    pytest.param(_with(inputs=np.ones((2, 3), np.float64)), ["inputs"], id="inputs-f64"),
    pytest.param(_with(weights=np.ones((4, 3), np.float64)), ["weights"], id="weights-f64"),
    pytest.param(_with(biases=np.zeros(4, np.float64)), ["biases"], id="biases-f64"),
]

_ARG_ORDER = ("inputs", "weights", "biases", "indices")


def _assert_names_op_and_args(error, arg_names):
    """Some line of the message starts the op's own text and names every argument involved."""
    lines = [line for line in str(error).splitlines() if f"{OP}:" in line]
    assert lines, f"no '{OP}:' in error message:\n{error}"
    assert any(
        all(re.search(rf"\b{name}\b", line.split(f"{OP}:", 1)[1]) for name in arg_names)
        for line in lines
    ), f"message does not name {arg_names}:\n{error}"


@pytest.mark.parametrize("args,arg_names", ERROR_CASES)
@pytest.mark.parametrize("mode", ["eager", "function", "function-unknown-shapes"])
def test_bad_input_raises_named_error(mode, args, arg_names):
    tensors = [tf.constant(args[name]) for name in _ARG_ORDER]
    if mode == "eager":
        expected = tf.errors.InvalidArgumentError
        fn = sparse_gather_matmul
    elif mode == "function":
        # Static shapes: the shape function may reject the call while tracing.
        expected = (tf.errors.InvalidArgumentError, ValueError)
        fn = tf.function(sparse_gather_matmul)
    else:
        # No static shapes: only the kernel (or the dtype check) can catch the error.
        expected = tf.errors.InvalidArgumentError
        fn = tf.function(
            sparse_gather_matmul,
            input_signature=[tf.TensorSpec(None, t.dtype) for t in tensors],
        )
    with pytest.raises(expected) as info:
        fn(*tensors)
    _assert_names_op_and_args(info.value, arg_names)


# ---------------------------------------------------------------------------------------------
# 4. tf.function
# ---------------------------------------------------------------------------------------------


def test_tf_function_with_unknown_batch_matches_eager():
    dim, num_neurons, active = 19, 30, 6

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, dim], tf.float32),
            tf.TensorSpec([num_neurons, dim], tf.float32),
            tf.TensorSpec([num_neurons], tf.float32),
            tf.TensorSpec([None, active], tf.int32),
            tf.TensorSpec([None, active], tf.float32),
        ]
    )
    def graph_fn(x, w, b, idx, grad_out):
        with tf.GradientTape() as tape:
            tape.watch([x, w, b])
            out = sparse_gather_matmul(x, w, b, idx)
            loss = tf.reduce_sum(out * grad_out)
        dx, dw, db = tape.gradient(loss, [x, w, b])
        return out, dx, dw.indices, dw.values, db.indices, db.values

    static_out = graph_fn.get_concrete_function().structured_outputs[0]
    assert static_out.shape.as_list() == [None, active]

    for seed, batch in enumerate([1, 7, 40]):
        x, w, b, idx = make_case(10 + seed, batch, dim, num_neurons, active)
        grad_out = np.random.default_rng(seed).standard_normal((batch, active)).astype(np.float32)
        graph = [t.numpy() for t in graph_fn(x, w, b, idx, grad_out)]
        out, dx, dw, db = forward_and_grads(x, w, b, idx, grad_out)
        eager = [t.numpy() for t in (out, dx, dw.indices, dw.values, db.indices, db.values)]
        for g, e in zip(graph, eager, strict=True):
            np.testing.assert_array_equal(g, e)
        np.testing.assert_allclose(graph[0], numpy_forward(x, w, b, idx), rtol=1e-4, atol=1e-4)

    assert graph_fn.experimental_get_tracing_count() == 1


# ---------------------------------------------------------------------------------------------
# 5. Keras 3
# ---------------------------------------------------------------------------------------------


class SparseGatherDense(keras.layers.Layer):
    """Computes the outputs of a fixed set of neurons per example."""

    def __init__(self, num_neurons, indices, **kwargs):
        super().__init__(**kwargs)
        self.num_neurons = num_neurons
        self.indices = np.asarray(indices, np.int32)

    def build(self, input_shape):
        dim = input_shape[-1]
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.num_neurons, dim),
            initializer=keras.initializers.RandomNormal(seed=1),
        )
        self.bias = self.add_weight(
            name="bias",
            shape=(self.num_neurons,),
            initializer=keras.initializers.RandomNormal(seed=2),
        )

    def call(self, x):
        return sparse_gather_matmul(x, self.kernel, self.bias, tf.constant(self.indices))


def test_keras_fit_updates_only_active_rows():
    dim, num_neurons, learning_rate = 6, 12, 0.1
    indices = np.array([[0, 3, -1], [3, 7, 7], [-1, -1, -1], [10, 0, 5]], np.int32)
    batch, active = indices.shape
    used = sorted(set(indices[indices >= 0].tolist()))
    unused = sorted(set(range(num_neurons)) - set(used))

    layer = SparseGatherDense(num_neurons, indices)
    inputs = keras.Input(shape=(dim,), batch_size=batch)
    model = keras.Model(inputs, layer(inputs))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        loss="mse",
        jit_compile=False,
    )

    rng = np.random.default_rng(8)
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    y = rng.standard_normal((batch, active)).astype(np.float32)
    kernel_before = np.array(layer.kernel.numpy())
    bias_before = np.array(layer.bias.numpy())

    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 1

    kernel_after = layer.kernel.numpy()
    bias_after = layer.bias.numpy()
    assert np.array_equal(kernel_after[unused], kernel_before[unused])
    assert np.array_equal(bias_after[unused], bias_before[unused])
    for row in used:
        assert not np.array_equal(kernel_after[row], kernel_before[row]), f"kernel row {row}"
        assert bias_after[row] != bias_before[row], f"bias row {row}"

    # The step is plain SGD on the mean-squared error.
    out = numpy_forward(x, kernel_before, bias_before, indices)
    grad_out = 2.0 * (out - y) / (batch * active)
    _, dw, db = numpy_grads(x, kernel_before, indices, grad_out)
    np.testing.assert_allclose(kernel_after, kernel_before - learning_rate * dw, atol=1e-5)
    np.testing.assert_allclose(bias_after, bias_before - learning_rate * db, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 6. Determinism
# ---------------------------------------------------------------------------------------------


def test_forward_and_gradient_are_deterministic():
    # Many examples sharing few neurons: the gradient sums run across threads' shards.
    batch, dim, num_neurons, active = 512, 67, 24, 32
    x, w, b, idx = make_case(9, batch, dim, num_neurons, active)
    grad_out = np.random.default_rng(9).standard_normal((batch, active)).astype(np.float32)

    def run():
        out, dx, dw, db = forward_and_grads(x, w, b, idx, grad_out)
        return [t.numpy() for t in (out, dx, dw.indices, dw.values, db.indices, db.values)]

    first, second = run(), run()
    for a, c in zip(first, second, strict=True):
        assert a.dtype == c.dtype and a.shape == c.shape
        assert np.array_equal(a, c)  # bitwise, not approximately


_THREADS_CHILD = """
import sys
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import tf_lsh_ops
data = np.load(sys.argv[1])
x, w, b = (tf.constant(data[k]) for k in ("x", "w", "b"))
with tf.GradientTape() as tape:
    tape.watch([x, w, b])
    out = tf_lsh_ops.sparse_gather_matmul(x, w, b, tf.constant(data["idx"]))
    loss = tf.reduce_sum(out * data["grad_out"])
dx, dw, db = tape.gradient(loss, [x, w, b])
np.savez(sys.argv[2], out=out, dx=dx, dw_indices=dw.indices, dw_values=dw.values,
         db_indices=db.indices, db_values=db.values)
"""


@pytest.mark.parametrize("shared", [False, True], ids=["per_example", "shared"])
def test_results_do_not_depend_on_thread_count(tmp_path, shared):
    """Documented: the same bits whatever the number of threads (here: default vs one)."""
    batch, dim, num_neurons, active = 384, 45, 40, 24
    x, w, b, idx = make_case(12, batch, dim, num_neurons, active)
    if shared:  # one active set for the batch: the blocked dense path
        idx = idx[:1]
    grad_out = np.random.default_rng(12).standard_normal((batch, active)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, w=w, b=b, idx=idx, grad_out=grad_out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run(
        [sys.executable, "-c", _THREADS_CHILD, str(tmp_path / "in.npz"), str(tmp_path / "out")],
        check=True,
        env=env,
        # `python -c` puts the working directory first on sys.path: keep the checkout off it.
        cwd=tempfile.gettempdir(),
        timeout=120,
    )
    single = np.load(tmp_path / "out.npz")

    out, dx, dw, db = forward_and_grads(x, w, b, idx, grad_out)
    here = {
        "out": out,
        "dx": dx,
        "dw_indices": dw.indices,
        "dw_values": dw.values,
        "db_indices": db.indices,
        "db_values": db.values,
    }
    for name, value in here.items():
        assert np.array_equal(value.numpy(), single[name]), name


@pytest.mark.parametrize(
    "rows, row_splits, positions, message",
    [
        ([0, 2], [0, 1, 3], [0, 1, 2], None),  # valid: the reference below
        ([2, 0], [0, 1, 3], [0, 1, 2], "increasing neuron ids"),
        ([0, 9], [0, 1, 3], [0, 1, 2], "increasing neuron ids"),
        ([0, 2], [0, 0, 3], [0, 1, 2], "row_splits must increase"),
        ([0, 2], [0, 1, 4], [0, 1, 2], "start at 0 and end"),
        ([0, 2], [0, 1, 3], [0, 1, 99], "positions must lie in"),
        ([0, 2], [0, 3], [0, 1, 2], "one entry more than rows"),
    ],
)
def test_raw_gradient_op_checks_the_grouping(rows, row_splits, positions, message):
    """The grouping normally comes from the forward op; a hand-made one must not crash."""
    from tf_lsh_ops._loader import ops

    x = tf.ones([2, 3])
    w = tf.reshape(tf.range(12, dtype=tf.float32), [4, 3])
    grad = tf.ones([2, 2])
    indices = tf.zeros([2, 2], tf.int32)  # only its shape matters here: per-example
    call = lambda: ops.tf_lsh_sparse_gather_matmul_grad(  # noqa: E731
        x, w, tf.constant(rows), tf.constant(row_splits), tf.constant(positions), grad, indices
    )
    if message is None:
        grad_inputs, grad_rows, grad_bias = call()
        # positions 0, 1, 2 of a [2, 2] grad: row 0 at (0, 0); row 2 at (0, 1) and (1, 0).
        np.testing.assert_allclose(grad_inputs.numpy(), [[6, 8, 10], [6, 7, 8]])
        np.testing.assert_allclose(grad_rows.numpy(), [[1, 1, 1], [2, 2, 2]])
        np.testing.assert_allclose(grad_bias.numpy(), [1, 2])
    else:
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=f"SparseGatherMatmulGrad.*{message}"
        ):
            call()


def _sparse_case(seed, batch=6, dim=13, num_neurons=9, active=5, density=0.3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    x *= rng.random((batch, dim)) < density
    x[-1] = 0  # a row without entries
    w = rng.standard_normal((num_neurons, dim)).astype(np.float32)
    b = rng.standard_normal(num_neurons).astype(np.float32)
    idx = rng.integers(-1, num_neurons, (batch, active)).astype(np.int32)
    idx[0, :2] = [3, 3]  # a duplicate
    return x, w, b, idx


def _broken_sparse_case(change):
    """`_sparse_case(3)` as `(inputs, weights, biases, indices)`, inputs a `tf.SparseTensor`,
    with one argument broken as `change` says."""
    x, w, b, idx = _sparse_case(3)
    inputs = tf.sparse.from_dense(x)
    if change == "weights_width":
        w = w[:, :-1]
    elif change == "weights_rank":
        w = w[0]
    elif change == "index_high":
        idx[1, 1] = 9
    elif change == "batch":
        idx = idx[:-1]
    elif change == "not_sparse":
        inputs = x
    elif change == "entry_outside":
        inputs = tf.SparseTensor([[0, 20]], [1.0], [6, 13])
    return inputs, w, b, idx


def test_sparse_inputs_match_dense_inputs_in_values_and_gradients():
    x, w, b, idx = _sparse_case(0)
    dense = tf.sparse.from_dense(x)
    # Unsorted entries, one feature split in two repeated entries (they add up).
    order = np.random.default_rng(1).permutation(int(tf.size(dense.values)))
    indices = tf.gather(dense.indices, order)
    values = tf.Variable(tf.gather(dense.values, order))
    inputs = lambda: tf.SparseTensor(indices, values, dense.dense_shape)  # noqa: E731
    weights, biases = tf.Variable(w), tf.Variable(b)
    with tf.GradientTape() as tape:
        out = tf_lsh_ops.sparse_input_gather_matmul(inputs(), weights, biases, idx)
        loss = tf.reduce_sum(out * out)
    grad_values, grad_w, grad_b = tape.gradient(loss, [values, weights, biases])
    np.testing.assert_allclose(out.numpy(), numpy_forward(x, w, b, idx), rtol=1e-5, atol=1e-5)
    dense_x = tf.Variable(x)
    with tf.GradientTape() as tape:
        ref = sparse_gather_matmul(dense_x, weights.read_value(), biases.read_value(), idx)
        ref_loss = tf.reduce_sum(ref * ref)
    grad_x = tape.gradient(ref_loss, dense_x).numpy()
    at = indices.numpy()
    np.testing.assert_allclose(
        grad_values.numpy(), grad_x[at[:, 0], at[:, 1]], rtol=1e-4, atol=1e-5
    )
    with tf.GradientTape() as tape:
        ref = sparse_gather_matmul(x, weights, biases, idx)
        ref_loss = tf.reduce_sum(ref * ref)
    ref_w, ref_b = tape.gradient(ref_loss, [weights, biases])
    assert isinstance(grad_w, tf.IndexedSlices) and isinstance(grad_b, tf.IndexedSlices)
    assert len(np.unique(grad_w.indices.numpy())) == len(grad_w.indices.numpy())
    for got, want in ((grad_w, ref_w), (grad_b, ref_b)):
        np.testing.assert_allclose(
            tf.convert_to_tensor(got).numpy(),
            tf.convert_to_tensor(want).numpy(),
            rtol=1e-4,
            atol=1e-5,
        )


def test_sparse_inputs_repeated_entries_add_up():
    x, w, b, idx = _sparse_case(2)
    dense = tf.sparse.from_dense(x)
    doubled = tf.SparseTensor(
        tf.concat([dense.indices, dense.indices], 0),
        tf.concat([dense.values, dense.values], 0),
        dense.dense_shape,
    )
    out = tf_lsh_ops.sparse_input_gather_matmul(doubled, w, b, idx).numpy()
    np.testing.assert_allclose(out, numpy_forward(2 * x, w, b, idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        ("weights_width", "must have 13 columns"),
        ("index_high", "outside \\[-1, 9\\)"),
        ("batch", "indices .* 6 rows"),
        ("not_sparse", "must be a tf.SparseTensor"),
        ("entry_outside", "outside dense_shape"),
    ],
)
def test_sparse_inputs_bad_input_is_named(change, message):
    inputs, w, b, idx = _broken_sparse_case(change)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"SparseInputGatherMatmul.*{message}"):
        tf_lsh_ops.sparse_input_gather_matmul(inputs, w, b, idx)


# --- sparse_input_products: sparse inputs times every unit of a neuron-major kernel. --------


def test_sparse_input_products_match_sparse_dense_matmul_and_the_gather_over_all_units():
    x, w, b, _ = _sparse_case(4)
    x[2] = 0  # an empty row
    indices, values, dense_shape = _shuffled_sparse(x, seed=4)
    inputs = tf.SparseTensor(indices, values, dense_shape)
    doubled = tf.SparseTensor(  # repeated entries add up
        tf.concat([indices, indices], 0), tf.concat([values, values], 0), dense_shape
    )
    out = tf_lsh_ops.sparse_input_products(inputs, w).numpy()
    want = x @ w.T
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    assert out.shape == (x.shape[0], w.shape[0]) and not out[2].any()
    all_units = np.tile(np.arange(w.shape[0], dtype=np.int32), (x.shape[0], 1))
    gathered = tf_lsh_ops.sparse_input_gather_matmul(inputs, w, np.zeros_like(b), all_units)
    np.testing.assert_array_equal(out, gathered.numpy())  # the same sums, in the same order
    np.testing.assert_allclose(
        tf_lsh_ops.sparse_input_products(doubled, w).numpy(), 2 * want, rtol=1e-5, atol=1e-6
    )
    # In a traced function with an unknown batch, and from a variable.
    spec = tf.SparseTensorSpec([None, x.shape[1]], tf.float32)
    variable = tf.Variable(w)
    traced = tf.function(
        lambda inputs: tf_lsh_ops.sparse_input_products(inputs, variable), input_signature=[spec]
    )
    np.testing.assert_array_equal(traced(inputs).numpy(), out)


@pytest.mark.parametrize(
    "change, message",
    [
        ("weights_width", "must have 13 columns"),
        ("weights_rank", "weights must have rank 2"),
        ("not_sparse", "must be a tf.SparseTensor"),
        ("entry_outside", "outside dense_shape"),
    ],
)
def test_sparse_input_products_bad_input_is_named(change, message):
    inputs, w, _, _ = _broken_sparse_case(change)
    with pytest.raises(
        (tf.errors.InvalidArgumentError, ValueError), match=f"SparseInputProducts.*{message}"
    ):
        tf_lsh_ops.sparse_input_products(inputs, w)


# --- sparse_input_matmul: sparse inputs [B, F] times a feature-major kernel [F, H]. ---------


def _bag_of_words(seed, batch=6, num_features=30, units=7, density=0.2):
    """Dense inputs with empty rows (the last, and the first trailing), and a kernel."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, num_features)).astype(np.float32)
    x *= rng.random((batch, num_features)) < density
    x[-1] = 0
    kernel = rng.standard_normal((num_features, units)).astype(np.float32)
    return x, kernel


def _shuffled_sparse(x, seed):
    """x as a tf.SparseTensor with its entries in a random order."""
    sparse = tf.sparse.from_dense(x)
    order = np.random.default_rng(seed).permutation(int(tf.size(sparse.values)))
    return tf.gather(sparse.indices, order), tf.gather(sparse.values, order), sparse.dense_shape


@pytest.mark.parametrize("kernel_kind", ["tensor", "variable", "copy_on_read_variable"])
def test_sparse_input_matmul_matches_dense_matmul_and_its_gradients(kernel_kind):
    x, kernel = _bag_of_words(0)
    indices, values, dense_shape = _shuffled_sparse(x, 1)
    values = tf.Variable(values)
    kernel_var = tf.Variable(kernel)
    if kernel_kind == "copy_on_read_variable":
        tf.gather(kernel_var, [0])  # a sparse read switches the variable to copy-on-read mode
    upstream = np.random.default_rng(2).standard_normal((6, 7)).astype(np.float32)
    with tf.GradientTape() as tape:
        # A variable is read in place through its handle (the Resource op).
        kernel_arg = kernel_var.read_value() if kernel_kind == "tensor" else kernel_var
        out = tf_lsh_ops.sparse_input_matmul(
            tf.SparseTensor(indices, values, dense_shape), kernel_arg
        )
        loss = tf.reduce_sum(out * upstream)
    grad_values, grad_kernel = tape.gradient(loss, [values, kernel_var])
    np.testing.assert_allclose(out.numpy(), x @ kernel, rtol=1e-5, atol=1e-5)
    # d loss / d x = upstream @ kernel.T, read at the entries; d loss / d kernel = x.T @ upstream.
    at = indices.numpy()
    np.testing.assert_allclose(
        grad_values.numpy(), (upstream @ kernel.T)[at[:, 0], at[:, 1]], rtol=1e-5, atol=1e-5
    )
    assert isinstance(grad_kernel, tf.IndexedSlices)
    rows = grad_kernel.indices.numpy()
    np.testing.assert_array_equal(rows, np.flatnonzero(np.any(x != 0, axis=0)))
    np.testing.assert_allclose(
        grad_kernel.values.numpy(), (x.T @ upstream)[rows], rtol=1e-5, atol=1e-5
    )


def test_sparse_input_matmul_gradients_against_finite_differences():
    x, kernel = _bag_of_words(3, batch=3, num_features=8, units=4, density=0.5)
    indices, values, dense_shape = _shuffled_sparse(x, 4)

    def f(values, kernel):
        return tf_lsh_ops.sparse_input_matmul(tf.SparseTensor(indices, values, dense_shape), kernel)

    theoretical, numerical = tf.test.compute_gradient(f, [values, tf.constant(kernel)], delta=1e-2)
    for got, want in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def test_sparse_input_matmul_skips_the_values_gradient_of_data():
    """Values that nothing differentiates (data) get no gradient pass, eagerly or in a graph;
    the kernel's gradient is the same either way."""
    x, kernel = _bag_of_words(6)
    indices, values, dense_shape = _shuffled_sparse(x, 7)
    kernel_var = tf.Variable(kernel)

    def kernel_gradient(watch_values):
        with tf.GradientTape() as tape:
            if watch_values:
                tape.watch(values)
            out = tf_lsh_ops.sparse_input_matmul(
                tf.SparseTensor(indices, values, dense_shape), kernel_var
            )
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, kernel_var)

    want = kernel_gradient(watch_values=True)
    np.testing.assert_array_equal(kernel_gradient(watch_values=False).values, want.values)
    for watch_values in (False, True):
        graph = tf.function(lambda w=watch_values: kernel_gradient(w)).get_concrete_function()
        (grad_op,) = [
            op
            for op in graph.graph.get_operations()
            if op.type == op_type("ResourceSparseInputMatmulGrad")
        ]
        assert grad_op.get_attr("values_gradient") == watch_values
        assert grad_op.outputs[0].shape.as_list() == ([values.shape[0]] if watch_values else [0])


def _with_explicit_zero(x, row):
    """`(feature, sparse, at)`: dense `x` as a `tf.SparseTensor` plus an entry of value 0 in
    `row`, on the first feature no example has; `at` is that entry's position."""
    feature = int(np.flatnonzero(~x.any(axis=0))[0])
    plain = tf.sparse.from_dense(x)
    sparse = tf.sparse.reorder(
        tf.SparseTensor(
            tf.concat([plain.indices, [[row, feature]]], 0),
            tf.concat([plain.values, [0.0]], 0),
            plain.dense_shape,
        )
    )
    at = int(np.flatnonzero(tf.reduce_all(sparse.indices == [row, feature], 1))[0])
    return feature, sparse, at


def test_sparse_input_matmul_leaves_out_the_kernel_rows_of_zero_inputs():
    """A feature present only with value 0 (a candidate an `LSHDense` did not pass on) gets no
    kernel gradient row, so `SparseAdam` leaves it as if absent; its value still gets its
    gradient."""
    x, kernel = _bag_of_words(8)
    sparse = tf.sparse.from_dense(x)
    absent, with_zero, at = _with_explicit_zero(x, 1)
    kernel_var = tf.Variable(kernel)
    upstream = np.random.default_rng(8).standard_normal((x.shape[0], kernel.shape[1]))
    gradients = []
    for inputs in (sparse, with_zero):
        values = tf.Variable(inputs.values)
        with tf.GradientTape() as tape:
            out = tf_lsh_ops.sparse_input_matmul(
                tf.SparseTensor(inputs.indices, values, inputs.dense_shape), kernel_var
            )
            loss = tf.reduce_sum(out * upstream)
        gradients.append(tape.gradient(loss, [kernel_var, values]))
    (plain, _), (zeroed, value_grads) = gradients
    assert absent not in zeroed.indices.numpy()
    np.testing.assert_array_equal(zeroed.indices, plain.indices)
    np.testing.assert_array_equal(zeroed.values, plain.values)
    want = kernel[absent] @ upstream[1]
    assert value_grads.numpy()[at] == pytest.approx(want, rel=1e-5) and want != 0
    # The forward pass skips the zero: an infinite weight there adds nothing, not NaN.
    infinite = kernel.copy()
    infinite[absent] = np.inf
    np.testing.assert_array_equal(
        tf_lsh_ops.sparse_input_matmul(with_zero, infinite).numpy(),
        tf_lsh_ops.sparse_input_matmul(sparse, infinite).numpy(),
    )


def test_sparse_input_matmul_repeated_entries_and_empty_batch():
    x, kernel = _bag_of_words(5)
    sparse = tf.sparse.from_dense(x)
    doubled = tf.SparseTensor(
        tf.concat([sparse.indices, sparse.indices], 0),
        tf.concat([sparse.values, sparse.values], 0),
        sparse.dense_shape,
    )
    np.testing.assert_allclose(
        tf_lsh_ops.sparse_input_matmul(doubled, kernel).numpy(), 2 * x @ kernel, rtol=1e-5
    )
    empty = tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0]), [0, 30])
    assert tf_lsh_ops.sparse_input_matmul(empty, kernel).shape == (0, 7)


@pytest.mark.parametrize(
    "change, message",
    [
        ("kernel_rows", r"kernel \(shape \[29,7\]\) must have 30 rows"),
        ("kernel_rank", "kernel must have rank 2"),
        ("not_sparse", "must be a tf.SparseTensor"),
        ("entry_outside", "outside dense_shape"),
    ],
)
def test_sparse_input_matmul_bad_input_is_named(change, message):
    x, kernel = _bag_of_words(6)
    inputs = tf.sparse.from_dense(x)
    if change == "kernel_rows":
        kernel = kernel[:-1]
    elif change == "kernel_rank":
        kernel = kernel[0]
    elif change == "not_sparse":
        inputs = x
    elif change == "entry_outside":
        inputs = tf.SparseTensor([[0, 40]], [1.0], [6, 30])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"SparseInputMatmul.*{message}"):
        tf_lsh_ops.sparse_input_matmul(inputs, kernel)


def test_sparse_input_matmul_grad_checks_grad_output():
    x, kernel = _bag_of_words(7)
    sparse = tf.sparse.from_dense(x)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="SparseInputMatmulGrad: grad_output has shape"
    ):
        tf_lsh_ops._loader.ops.tf_lsh_sparse_input_matmul_grad(
            sparse.indices, sparse.values, sparse.dense_shape, kernel, tf.zeros([6, 6])
        )


def _anon_huge_page_bytes():
    with open("/proc/self/smaps_rollup") as smaps:
        for line in smaps:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    return 0


def _transparent_huge_pages_available():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
            return "[never]" not in setting.read()
    except OSError:
        return False


@pytest.mark.skipif(
    not _transparent_huge_pages_available()
    or os.environ.get("TF_LSH_HUGE_PAGES") == "0"
    or "asan" in os.environ.get("LD_PRELOAD", ""),  # ASAN's allocator maps memory its own way
    reason="transparent huge pages are off, or memory comes from a sanitizer's allocator",
)
def test_large_weight_variables_move_to_huge_pages_with_values_kept():
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((140_000, 128), dtype=np.float32)  # 72 MB
    biases = rng.standard_normal(140_000, dtype=np.float32)
    w, b = tf.Variable(weights), tf.Variable(biases)
    # 35,000 row reads, a 4 KB page each at most: enough for huge pages (core/huge_pages.h;
    # fewer leave the variable alone, which the C++ test checks).
    x = tf.constant(rng.standard_normal((700, 128), dtype=np.float32))
    idx = tf.constant(rng.integers(-1, 140_000, (700, 50), dtype=np.int32))
    before = _anon_huge_page_bytes()
    out = sparse_gather_matmul(x, w, b, idx).numpy()
    # Most of the 72 MB (all but the partial 2 MB pages at the ends) moves to huge pages, in
    # the background.
    deadline = time.monotonic() + 60
    while _anon_huge_page_bytes() - before < 60 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _anon_huge_page_bytes() - before >= 60 * 2**20
    np.testing.assert_allclose(
        out, numpy_forward(x.numpy(), weights, biases, idx.numpy()), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(w.numpy(), weights)


@pytest.mark.parametrize("use_variables", [False, True], ids=["tensors", "variables"])
def test_shared_active_set_equals_the_set_repeated_per_example(use_variables):
    """indices [1, K] serves the whole batch, with the values and gradients of [B, K]."""
    rng = np.random.default_rng(4)
    batch, dim, num_neurons, active = 9, 37, 50, 21
    x = tf.constant(rng.standard_normal((batch, dim), dtype=np.float32))
    w_init = rng.standard_normal((num_neurons, dim), dtype=np.float32)
    b_init = rng.standard_normal(num_neurons, dtype=np.float32)
    ids = rng.integers(-1, num_neurons, (1, active)).astype(np.int32)
    ids[0, :2] = 5  # a duplicate
    upstream = tf.constant(rng.standard_normal((batch, active), dtype=np.float32))

    def run(indices):
        w = tf.Variable(w_init) if use_variables else tf.constant(w_init)
        b = tf.Variable(b_init) if use_variables else tf.constant(b_init)
        with tf.GradientTape() as tape:
            tape.watch(x)
            if not use_variables:
                tape.watch([w, b])
            out = sparse_gather_matmul(x, w, b, indices)
        return out, tape.gradient(out, [x, w, b], output_gradients=upstream)

    out, grads = run(tf.constant(ids))
    want_out, want_grads = run(tf.constant(np.repeat(ids, batch, axis=0)))
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out, numpy_forward(x.numpy(), w_init, b_init, np.repeat(ids, batch, 0)), atol=1e-4
    )
    for grad, want in zip(grads, want_grads, strict=True):
        if isinstance(want, tf.IndexedSlices):
            assert isinstance(grad, tf.IndexedSlices)
            np.testing.assert_array_equal(grad.indices, want.indices)
            grad, want = grad.values, want.values
        np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4)


def test_shared_active_set_gradients_match_numerical():
    rng = np.random.default_rng(5)
    x = tf.constant(rng.standard_normal((4, 6)), tf.float32)
    w = tf.constant(rng.standard_normal((8, 6)), tf.float32)
    b = tf.constant(rng.standard_normal(8), tf.float32)
    ids = tf.constant([[3, -1, 3, 0, 7]], tf.int32)
    theoretical, numerical = tf.test.compute_gradient(
        lambda x, w, b: sparse_gather_matmul(x, w, b, ids), [x, w, b]
    )
    for t, n in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(t, n, atol=2e-2)


def test_shared_active_set_shapes_and_errors():
    x = tf.ones([3, 4])
    w, b = tf.ones([6, 4]), tf.ones([6])
    spec = [tf.TensorSpec([None, 4]), tf.TensorSpec([1, 5], tf.int32)]
    fn = tf.function(lambda x, idx: sparse_gather_matmul(x, w, b, idx), input_signature=spec)
    assert fn.get_concrete_function().structured_outputs.shape.as_list() == [None, 5]
    assert fn(x, tf.zeros([1, 5], tf.int32)).shape == (3, 5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{OP}: .*indices.*must be 1"):
        sparse_gather_matmul(x, w, b, tf.zeros([2, 5], tf.int32))
    # An empty batch with a shared set: an empty output and gradient, no crash.
    empty = tf.zeros([0, 4])
    with tf.GradientTape() as tape:
        tape.watch(empty)
        out = sparse_gather_matmul(empty, w, b, tf.constant([[1, -1, 5]]))
    assert out.shape == (0, 3)
    assert tape.gradient(out, empty).shape == (0, 4)


@pytest.mark.parametrize("first_moment", [True, False], ids=["adam", "no_first_moment"])
@pytest.mark.parametrize("shared", [False, True], ids=["per_example", "shared"])
def test_fused_backward_adam_equals_gradient_then_sparse_adam_bit_for_bit(shared, first_moment):
    rng = np.random.default_rng(6)
    batch, dim, num_neurons, active = 6, 20, 40, 9
    x = tf.constant(rng.standard_normal((batch, dim), dtype=np.float32))
    idx = tf.constant(rng.integers(-1, num_neurons, (1 if shared else batch, active), np.int32))
    upstream = tf.constant(rng.standard_normal((batch, active), dtype=np.float32))
    init = [
        rng.standard_normal((num_neurons, dim), dtype=np.float32),
        rng.standard_normal(num_neurons, dtype=np.float32),
        rng.standard_normal((num_neurons, dim), dtype=np.float32) * 0.1,
        rng.random((num_neurons, dim), dtype=np.float32) * 0.1,
        rng.standard_normal(num_neurons, dtype=np.float32) * 0.1,
        rng.random(num_neurons, dtype=np.float32) * 0.1,
    ]
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=4)
    if not first_moment:  # m=None: Adam with beta_1 = 0 keeping no first moment
        init[2] = init[4] = None
        hyper["beta_1"] = 0.0
    plain = [None if v is None else tf.Variable(v) for v in init]
    w, b, wm, wv, bm, bv = plain
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = sparse_gather_matmul(x, w, b, idx)
    dx, dw, db = tape.gradient(out, [x, w, b], output_gradients=upstream)
    tf_lsh_ops.sparse_adam_apply(w, wm, wv, dw, **hyper)
    tf_lsh_ops.sparse_adam_apply(b, bm, bv, db, **hyper)

    fused = [None if v is None else tf.Variable(v) for v in init]
    w, b, *moments = fused
    fused_out, grouping = tf_lsh_ops.sparse_gather_matmul_grouped(x, w, b, idx)
    np.testing.assert_array_equal(fused_out, out)
    fused_dx = tf_lsh_ops.sparse_gather_matmul_adam(
        x, w, b, idx, grouping, upstream, moments, **hyper
    )
    np.testing.assert_array_equal(fused_dx, dx)
    for a, c, start in zip(plain, fused, init, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a.numpy(), c.numpy())
            assert not np.array_equal(a.numpy(), start)  # something was applied


def test_adam_without_first_moment_is_adam_with_beta_1_zero():
    """`m=None` keeps no first moment: lazy Adam with beta_1 = 0 (whose m is the gradient)."""
    rng = np.random.default_rng(12)
    w0 = rng.standard_normal((30, 5), dtype=np.float32)
    v0 = rng.random((30, 5), dtype=np.float32)
    rows = np.array([4, 1, 4, 29], np.int32)
    grad = rng.standard_normal((4, 5), dtype=np.float32)
    hyper = dict(learning_rate=0.02, beta_1=0.0, beta_2=0.9, epsilon=1e-7, step=5)
    w, v = tf.Variable(w0), tf.Variable(v0)
    tf_lsh_ops.sparse_adam_apply(w, None, v, tf.IndexedSlices(grad, rows), **hyper)
    want_w, _, want_v = reference_adam(w0, np.zeros_like(w0), v0, rows, grad, *hyper.values())
    np.testing.assert_allclose(v.numpy(), want_v, rtol=1e-6)
    np.testing.assert_allclose(w.numpy(), want_w, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(w.numpy()[[0, 2, 3]], w0[[0, 2, 3]])


def test_adam_without_first_moment_names_its_errors():
    w, v = tf.Variable(tf.ones([4, 3])), tf.Variable(tf.zeros([4, 3]))
    grad = tf.IndexedSlices(tf.ones([1, 3]), tf.constant([2]))
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)
    with pytest.raises(ValueError, match="SparseAdamNoMomentumApply: .* needs beta_1 = 0, got 0.9"):
        tf_lsh_ops.sparse_adam_apply(w, None, v, grad, **hyper)
    hyper["beta_1"] = 0.0
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"SparseAdamNoMomentumApply: v has shape \[4,2\]; var and v must share one shape",
    ):
        tf_lsh_ops.sparse_adam_apply(w, None, tf.Variable(tf.zeros([4, 2])), grad, **hyper)
    b, bv = tf.Variable(tf.ones([4])), tf.Variable(tf.zeros([3]))
    x, idx = tf.ones([2, 3]), tf.constant([[0, 1], [2, -1]])
    _, grouping = tf_lsh_ops.sparse_gather_matmul_grouped(x, w, b, idx)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"GradAdamNoMomentum: biases_v has shape \[3\]; it must match biases, \[4\]",
    ):
        tf_lsh_ops.sparse_gather_matmul_adam(
            x, w, b, idx, grouping, tf.ones([2, 2]), (None, v, None, bv), **hyper
        )
    np.testing.assert_array_equal(w.numpy(), np.ones([4, 3]))  # nothing was applied


def test_fused_backward_adam_checks_its_inputs():
    w, b = tf.Variable(tf.ones([4, 3])), tf.Variable(tf.ones([4]))
    moments = [tf.Variable(tf.zeros([4, 3])), tf.Variable(tf.zeros([4, 2]))]
    moments += [tf.Variable(tf.zeros([4])), tf.Variable(tf.zeros([4]))]
    x, idx = tf.ones([2, 3]), tf.constant([[0, 1], [2, -1]])
    _, grouping = tf_lsh_ops.sparse_gather_matmul_grouped(x, w, b, idx)
    hyper = dict(learning_rate=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="GradAdam: weights_v has shape"):
        tf_lsh_ops.sparse_gather_matmul_adam(
            x, w, b, idx, grouping, tf.ones([2, 2]), moments, **hyper
        )
    bad_grouping = (grouping[0], grouping[1], grouping[2] + 50)
    moments[1] = tf.Variable(tf.zeros([4, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="grouping from the forward op"):
        tf_lsh_ops.sparse_gather_matmul_adam(
            x, w, b, idx, bad_grouping, tf.ones([2, 2]), moments, **hyper
        )


def test_grouped_form_needs_variables():
    x, w, b = tf.ones([2, 3]), tf.ones([4, 3]), tf.ones([4])
    with pytest.raises(ValueError, match=f"{OP}: the grouped form takes weights and biases"):
        tf_lsh_ops.sparse_gather_matmul_grouped(x, w, b, tf.constant([[0, 1], [2, -1]]))


def test_adam_ops_name_a_tensor_given_where_a_variable_is_updated():
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)
    w, m = tf.Variable(tf.ones([4, 3])), tf.Variable(tf.zeros([4, 3]))
    grad = tf.IndexedSlices(tf.ones([1, 3]), tf.constant([2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="SparseAdamApply: v must be a var"):
        tf_lsh_ops.sparse_adam_apply(w, m, tf.zeros([4, 3]), grad, **hyper)
    b = tf.Variable(tf.ones([4]))
    moments = [m, tf.Variable(tf.zeros([4, 3])), tf.zeros([4]), tf.Variable(tf.zeros([4]))]
    x, idx = tf.ones([2, 3]), tf.constant([[0, 1], [2, -1]])
    _, grouping = tf_lsh_ops.sparse_gather_matmul_grouped(x, w, b, idx)
    with pytest.raises(tf.errors.InvalidArgumentError, match="biases_m must be a variable"):
        tf_lsh_ops.sparse_gather_matmul_adam(
            x, w, b, idx, grouping, tf.ones([2, 2]), moments, **hyper
        )
    np.testing.assert_array_equal(w.numpy(), np.ones([4, 3]))  # nothing was applied


def _first_layer_state(seed, num_features=30, units=7):
    """A kernel and two moments (non-zero, as after some steps), as NumPy arrays."""
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((num_features, units), dtype=np.float32),
        rng.standard_normal((num_features, units), dtype=np.float32) * 0.1,
        rng.random((num_features, units), dtype=np.float32) * 0.1,
    ]


@pytest.mark.parametrize("first_moment", [True, False], ids=["adam", "no_first_moment"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_sparse_input_matmul_adam_equals_gradient_then_sparse_adam_bit_for_bit(graph, first_moment):
    x, _ = _bag_of_words(8, batch=9)
    x[2, 5] = x[4, 5] = 1.5  # a feature in two rows
    indices, values, dense_shape = _shuffled_sparse(x, 9)
    inputs = tf.SparseTensor(indices, values, dense_shape)
    upstream = tf.constant(np.random.default_rng(10).standard_normal((9, 7), dtype=np.float32))
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3)
    init = _first_layer_state(11)
    if not first_moment:  # ResourceSparseInputMatmulGradAdamNoMomentum
        init[1], hyper["beta_1"] = None, 0.0

    plain = [None if v is None else tf.Variable(v) for v in init]
    with tf.GradientTape() as tape:
        out = tf_lsh_ops.sparse_input_matmul(inputs, plain[0])
    grad = tape.gradient(out, plain[0], output_gradients=upstream)
    tf_lsh_ops.sparse_adam_apply(*plain, grad, **hyper)

    fused = [None if v is None else tf.Variable(v) for v in init]

    def update():  # nothing returned: in a tf.function the update must run for its effect
        tf_lsh_ops.sparse_input_matmul_adam(inputs, fused[0], upstream, fused[1:], **hyper)

    (tf.function(update) if graph else update)()
    for a, c in zip(plain, fused, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a.numpy(), c.numpy())
    touched = np.any(x != 0, axis=0)
    assert np.all(fused[0].numpy()[touched] != init[0][touched])  # the rows present moved
    np.testing.assert_array_equal(fused[0].numpy()[~touched], init[0][~touched])  # no others


@pytest.mark.parametrize(
    "change, message",
    [
        ("grad_output", r"grad_output has shape \[9,6\]; it must be \[batch, units\]"),
        ("moment_shape", r"kernel_v has shape \[30,6\]; it must match kernel"),
        ("kernel_rows", r"kernel \(shape \[29,7\]\) must have 30 rows"),
        ("entry_outside", "outside dense_shape"),
        ("not_a_variable", "kernel must be a variable"),
    ],
)
@pytest.mark.parametrize("first_moment", [True, False], ids=["adam", "no_first_moment"])
def test_sparse_input_matmul_adam_bad_input_is_named(change, message, first_moment):
    x, _ = _bag_of_words(12, batch=9)
    inputs = tf.sparse.from_dense(x)
    kernel, m, v = _first_layer_state(13)
    grad_output = tf.ones([9, 7])
    if change == "grad_output":
        grad_output = tf.ones([9, 6])
    elif change == "moment_shape":
        v = v[:, :6]
    elif change == "kernel_rows":
        kernel, m, v = kernel[:-1], m[:-1], v[:-1]
    elif change == "entry_outside":
        inputs = tf.SparseTensor([[0, 40]], [1.0], [9, 30])
    kernel, m, v = (
        (tf.constant(kernel) if change == "not_a_variable" else tf.Variable(kernel)),
        (tf.Variable(m)),
        tf.Variable(v),
    )
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)
    op = "SparseInputMatmulGradAdam"
    if not first_moment:  # ResourceSparseInputMatmulGradAdamNoMomentum
        m, hyper["beta_1"], op = None, 0.0, "SparseInputMatmulGradAdamNoMomentum"
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{op}: .*{message}"):
        tf_lsh_ops.sparse_input_matmul_adam(inputs, kernel, grad_output, (m, v), **hyper)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_sparse_input_matmul_rowwise_rmsprop_equals_gradient_then_rowwise_apply_bit_for_bit(graph):
    x, _ = _bag_of_words(8, batch=9)
    x[2, 5] = x[4, 5] = 1.5  # a feature in two rows
    indices, values, dense_shape = _shuffled_sparse(x, 9)
    inputs = tf.SparseTensor(indices, values, dense_shape)
    upstream = tf.constant(np.random.default_rng(10).standard_normal((9, 7), dtype=np.float32))
    hyper = dict(learning_rate=0.01, beta_2=0.999, epsilon=1e-7, step=3)
    kernel0, _, v0 = _first_layer_state(11)
    v0 = v0[:, :1]  # a moment per feature row

    plain = [tf.Variable(kernel0), tf.Variable(v0)]
    with tf.GradientTape() as tape:
        out = tf_lsh_ops.sparse_input_matmul(inputs, plain[0])
    grad = tape.gradient(out, plain[0], output_gradients=upstream)
    tf_lsh_ops.sparse_rowwise_rmsprop_apply(*plain, grad, **hyper)
    # The rule as documented, row by row, in NumPy.
    g = np.zeros_like(kernel0)
    np.add.at(g, indices[:, 1], values[:, None] * upstream.numpy()[indices[:, 0]])
    touched = np.any(x != 0, axis=0)
    want_v = v0[:, 0] + (np.mean(g * g, axis=1) - v0[:, 0]) * (1 - 0.999)
    want_v[~touched] = v0[~touched, 0]
    alpha = 0.01 * np.sqrt(1 - 0.999**3)
    want_kernel = kernel0 - alpha * g / (np.sqrt(want_v)[:, None] + 1e-7)
    np.testing.assert_allclose(plain[1].numpy()[:, 0], want_v, rtol=1e-5)
    np.testing.assert_allclose(plain[0].numpy(), want_kernel, rtol=1e-5, atol=1e-6)

    fused = [tf.Variable(kernel0), tf.Variable(v0)]

    def update():  # nothing returned: in a tf.function the update must run for its effect
        tf_lsh_ops.sparse_input_matmul_rowwise_rmsprop(
            inputs, fused[0], upstream, fused[1], **hyper
        )

    (tf.function(update) if graph else update)()
    for a, c in zip(plain, fused, strict=True):
        np.testing.assert_array_equal(a.numpy(), c.numpy())
    assert np.all(fused[0].numpy()[touched] != kernel0[touched])  # the rows present moved
    np.testing.assert_array_equal(fused[0].numpy()[~touched], kernel0[~touched])  # no others
    np.testing.assert_array_equal(fused[1].numpy()[~touched], v0[~touched])


@pytest.mark.parametrize(
    "change, message",
    [
        ("grad_output", r"grad_output has shape \[9,6\]; it must be \[batch, units\]"),
        ("moment_shape", r"kernel_v has shape \[30,2\]; it must hold one value per row"),
        ("kernel_rows", r"kernel \(shape \[29,7\]\) must have 30 rows"),
        ("scalar", r"beta2 must be a scalar"),
        ("not_a_variable", "kernel_v must be a variable"),
    ],
)
def test_sparse_input_matmul_rowwise_rmsprop_bad_input_is_named(change, message):
    x, _ = _bag_of_words(12, batch=9)
    inputs = tf.sparse.from_dense(x)
    kernel, _, v = _first_layer_state(13)
    v = v[:, :1]
    grad_output = tf.ones([9, 7])
    hyper = dict(learning_rate=0.01, beta_2=0.999, epsilon=1e-7, step=1)
    if change == "grad_output":
        grad_output = tf.ones([9, 6])
    elif change == "moment_shape":
        v = np.ones((30, 2), np.float32)
    elif change == "kernel_rows":
        kernel, v = kernel[:-1], v[:-1]
    elif change == "scalar":
        hyper["beta_2"] = [0.9, 0.9]
    v = tf.constant(v) if change == "not_a_variable" else tf.Variable(v)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=f"SparseInputMatmulGradRowwiseRmsprop.*{message}"
    ):
        tf_lsh_ops.sparse_input_matmul_rowwise_rmsprop(
            inputs, tf.Variable(kernel), grad_output, v, **hyper
        )


def _lazy_adam_case(seed):
    x, w, b, idx = _sparse_case(seed, batch=7, dim=40, num_neurons=11, active=4, density=0.2)
    x[2, 5] = 0.0
    rng = np.random.default_rng(seed + 1)
    m = rng.standard_normal(w.shape).astype(np.float32)
    v = np.abs(rng.standard_normal(w.shape)).astype(np.float32)
    grad_output = rng.standard_normal(idx.shape).astype(np.float32)
    return x, w, b, idx, m, v, grad_output


def _unfused_lazy_reference(x, w, b, idx, grad_output):
    """The unfused backward of `sparse_input_gather_matmul` (the values', weights' and biases'
    gradients) and the weights a lazy update touches: each (unit, feature) whose feature is
    present in one of the unit's examples."""
    inputs = tf.sparse.from_dense(x)
    values = tf.Variable(inputs.values)
    weights, biases = tf.Variable(w), tf.Variable(b)
    with tf.GradientTape() as tape:
        sparse = tf.SparseTensor(inputs.indices, values, inputs.dense_shape)
        out = tf_lsh_ops.sparse_input_gather_matmul(sparse, weights, biases, idx)
    want_values, grad_w, want_bias = tape.gradient(
        out, [values, weights, biases], output_gradients=grad_output
    )
    grad_w = tf.convert_to_tensor(grad_w).numpy()
    touched = np.zeros(w.shape, bool)
    for row, ids in enumerate(idx):
        for unit in ids[ids >= 0]:
            touched[unit] |= x[row] != 0
    assert 10 < touched.sum() < touched.size / 2
    return want_values, grad_w, want_bias, touched


def _assert_gradients_close(got_values, got_bias, want_values, want_bias):
    """The values' and the biases' gradients of a lazy update against the unfused ones."""
    np.testing.assert_allclose(got_values.numpy(), want_values.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        tf.convert_to_tensor(got_bias).numpy(),
        tf.convert_to_tensor(want_bias).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_sparse_input_gather_lazy_adam_updates_only_the_touched_weights():
    x, w, b, idx, m, v, grad_output = _lazy_adam_case(5)
    inputs = tf.sparse.from_dense(x)
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3)
    # The reference: the unfused gradients, then Adam on each weight (unit, feature) whose
    # feature is present in one of the unit's examples, one at a time.
    want_values, grad_w, want_bias, touched = _unfused_lazy_reference(x, w, b, idx, grad_output)
    # Each touched weight as a row of its own for the row-wise reference.
    cells = reference_adam(
        w[touched][:, None],
        m[touched][:, None],
        v[touched][:, None],
        np.arange(touched.sum()),
        grad_w[touched][:, None],
        **_reference_hyper(hyper),
    )
    want = [w.copy(), m.copy(), v.copy()]
    for array, cell in zip(want, cells, strict=True):
        array[touched] = cell[:, 0]

    state = [tf.Variable(a) for a in (w, m, v)]
    got_values, got_bias = tf_lsh_ops.sparse_input_gather_matmul_lazy_adam(
        inputs, state[0], idx, grad_output, state[1:], **hyper
    )
    _assert_gradients_close(got_values, got_bias, want_values, want_bias)
    for got, expected in zip(state, want, strict=True):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    # Nothing else moved, bit for bit.
    for got, before in zip(state, (w, m, v), strict=True):
        np.testing.assert_array_equal(got.numpy()[~touched], before[~touched])


def test_sparse_input_gather_lazy_adam_leaves_the_weights_of_zero_inputs():
    """An entry whose value is 0 (a unit an `LSHDense` computed but did not pass on) gets its
    value's gradient, and its weights move as if it were absent."""
    x, w, b, idx, m, v, grad_output = _lazy_adam_case(6)
    inputs = tf.sparse.from_dense(x)
    feature, with_zero, zero_at = _with_explicit_zero(x, 2)
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3)
    results = []
    for sparse in (inputs, with_zero):
        state = [tf.Variable(a) for a in (w, m, v)]
        grads = tf_lsh_ops.sparse_input_gather_matmul_lazy_adam(
            sparse, state[0], idx, grad_output, state[1:], **hyper
        )
        results.append(([s.numpy() for s in state], grads))
    for got, want in zip(results[1][0], results[0][0], strict=True):
        np.testing.assert_array_equal(got, want)
    # The forward passes skip the zero: an infinite weight there adds nothing, not NaN.
    infinite = w.copy()
    infinite[:, feature] = np.inf
    for forward in (
        lambda x: tf_lsh_ops.sparse_input_gather_matmul(x, infinite, b, idx),
        lambda x: tf_lsh_ops.sparse_input_products(x, infinite),
    ):
        np.testing.assert_array_equal(forward(with_zero).numpy(), forward(inputs).numpy())
    # The zero's value gradient is its column of the weights against the outputs' gradient.
    ids = idx[2][idx[2] >= 0]
    want = float(np.dot(w[ids, feature], grad_output[2][idx[2] >= 0]))
    assert results[1][1][0].numpy()[zero_at] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert want != 0


def test_sparse_input_gather_backward_skips_units_whose_gradient_is_zero():
    """A unit whose output gradient is 0 (a ReLU below 0) adds nothing to the values'
    gradient, even with infinite weights: its reads are skipped, not multiplied."""
    x, w, b, idx, _, _, grad_output = _lazy_adam_case(7)
    inputs = tf.sparse.from_dense(x)
    unit = int(idx[0, 0])
    grad_output = np.where(idx == unit, 0.0, grad_output).astype(np.float32)
    infinite = w.copy()
    infinite[unit] = np.inf
    values = tf.Variable(inputs.values)
    got = []
    for weights in (w, infinite):
        with tf.GradientTape() as tape:
            sparse = tf.SparseTensor(inputs.indices, values, inputs.dense_shape)
            out = tf_lsh_ops.sparse_input_gather_matmul(sparse, tf.Variable(weights), b, idx)
        got.append(tape.gradient(out, values, output_gradients=grad_output).numpy())
    assert np.isfinite(got[1]).all()
    np.testing.assert_array_equal(got[1], got[0])


def _reference_hyper(hyper):
    return dict(
        lr=hyper["learning_rate"],
        beta1=hyper["beta_1"],
        beta2=hyper["beta_2"],
        eps=hyper["epsilon"],
        step=hyper["step"],
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ("moment_shape", r"weights_v has shape \[11,39\]; it must match weights"),
        ("grad_output", "grad_output has shape"),
        ("index", "indices holds 11"),
        ("not_a_variable", "weights must be a variable"),
    ],
)
def test_sparse_input_gather_lazy_adam_bad_input_is_named(change, message):
    x, w, b, idx, m, v, grad_output = _lazy_adam_case(6)
    if change == "moment_shape":
        v = v[:, :39]
    elif change == "grad_output":
        grad_output = grad_output[:, :3]
    elif change == "index":
        idx[1, 1] = 11
    weights = tf.constant(w) if change == "not_a_variable" else tf.Variable(w)
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=f"SparseInputGatherMatmulGradLazyAdam.*{message}",
    ):
        tf_lsh_ops.sparse_input_gather_matmul_lazy_adam(
            tf.sparse.from_dense(x),
            weights,
            idx,
            grad_output,
            (tf.Variable(m), tf.Variable(v)),
            **hyper,
        )


def test_sparse_input_gather_lazy_sgd_updates_only_the_touched_weights():
    x, w, b, idx, _, _, grad_output = _lazy_adam_case(7)
    inputs = tf.sparse.from_dense(x)
    want_values, grad_w, want_bias, touched = _unfused_lazy_reference(x, w, b, idx, grad_output)
    want = w.copy()
    want[touched] -= 0.05 * grad_w[touched]

    state = tf.Variable(w)
    got_values, got_bias = tf_lsh_ops.sparse_input_gather_matmul_lazy_sgd(
        inputs, state, idx, grad_output, learning_rate=0.05
    )
    _assert_gradients_close(got_values, got_bias, want_values, want_bias)
    np.testing.assert_allclose(state.numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state.numpy()[~touched], w[~touched])


def test_sparse_input_gather_lazy_sgd_hogwild_equals_grouped_when_examples_share_no_unit():
    # Each example's own units: no weight is updated twice, so no order or race can change the
    # result, and the one-pass update equals the grouped one.
    x, w, _, _ = _sparse_case(8, batch=6, dim=40, num_neurons=30, active=4, density=0.2)
    idx = np.random.default_rng(8).permutation(30)[:24].reshape(6, 4).astype(np.int32)
    idx[1, 2] = -1
    rng = np.random.default_rng(9)
    grad_output = rng.standard_normal(idx.shape).astype(np.float32)
    inputs = tf.sparse.from_dense(x)
    results = {}
    for hogwild in (False, True):
        weights = tf.Variable(w)
        values, bias = tf_lsh_ops.sparse_input_gather_matmul_lazy_sgd(
            inputs, weights, idx, grad_output, learning_rate=0.1, hogwild=hogwild
        )
        bias = tf.convert_to_tensor(bias).numpy()
        results[hogwild] = (weights.numpy(), values.numpy(), bias)
    assert not np.array_equal(results[True][0], w)
    for grouped, hogwild in zip(results[False], results[True], strict=True):
        np.testing.assert_allclose(hogwild, grouped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        ("grad_output", "grad_output has shape"),
        ("index", "indices holds 11"),
        ("not_a_variable", "weights must be a variable"),
        ("learning_rate", "lr must be a scalar"),
        ("hogwild", "hogwild must be True or False, got 'yes'"),
    ],
)
@pytest.mark.parametrize("traced", [False, True])
def test_sparse_input_gather_lazy_sgd_bad_input_is_named(change, message, traced):
    x, w, b, idx, _, _, grad_output = _lazy_adam_case(6)
    if change == "grad_output":
        grad_output = grad_output[:, :3]
    elif change == "index":
        idx[1, 1] = 11
    weights = tf.constant(w) if change == "not_a_variable" else tf.Variable(w)
    learning_rate = [0.1, 0.2] if change == "learning_rate" else 0.1
    hogwild = "yes" if change == "hogwild" else False

    def run():
        return tf_lsh_ops.sparse_input_gather_matmul_lazy_sgd(
            tf.sparse.from_dense(x),
            weights,
            idx,
            grad_output,
            learning_rate=learning_rate,
            hogwild=hogwild,
        )

    errors = (tf.errors.InvalidArgumentError, ValueError, TypeError)
    with pytest.raises(errors, match=f"SparseInputGatherMatmulGradLazySgd.*{message}"):
        tf.function(run)() if traced else run()


if __name__ == "__main__":
    import sys

    sys.exit(pytest.main([__file__, "-q"]))
