"""Tests of the Keras layers: `LSHDense`, `LSHClassifier`, `SparseAdam`, `SparseInputDense`,
`LSHRebuildCallback` and their configuration errors.

Serialization, checkpoint resume and SavedModel export are in test_keras_saving.py.

Contracts under test (see keras_layers/*.py):
  - `LSHDense` stores its kernel neuron-major, `[units, input_dim]`: `keras.layers.Dense` with
    the transposed kernel computes the same function. Inference "dense" is that function;
    training (and inference "lsh") computes only each example's active units
    (`layer.active_ids(x)`, the same ids `active_outputs` uses) and leaves zeros elsewhere.
  - `LSHClassifier` puts every example's labels first in its active set and trains on the
    softmax over that set; evaluation works in both inference modes.
  - `SparseAdam` is lazy Adam on `tf.IndexedSlices` (untouched rows and their moments keep
    their bits, duplicate indices are summed) and Keras' Adam on dense gradients.
  - `SparseInputDense(x) == tf.sparse.to_dense(x) @ kernel + bias` with a sparse kernel
    gradient.
  - `LSHRebuildCallback` rebuilds on its schedule and logs `lsh_rebuilds`.
"""

import os
import subprocess
import sys
import tempfile
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

try:
    import tf_lsh_ops  # noqa: E402, F401
except ModuleNotFoundError:  # Not installed: use the source tree this file belongs to.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tf_lsh_ops  # noqa: E402, F401

from lsh_references import bucket_sets  # noqa: E402

import keras_layers  # noqa: E402
from keras_layers import (  # noqa: E402
    LSHClassifier,
    LSHDense,
    LSHRebuildCallback,
    PrecisionAtK,
    SparseAdam,
    SparseInputDense,
    lsh_dense,
    set_inference,
)
from tf_lsh_ops._loader import op_type  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def lsh_and_dense(units, dim, activation, use_bias=True, **kwargs):
    """A built LSHDense (hash tables unless told) and a keras Dense with the same (transposed)
    weights."""
    kwargs.setdefault("active_rule", "frequency")
    layer = LSHDense(
        units,
        activation=activation,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.GlorotUniform(seed=1),
        bias_initializer=keras.initializers.RandomNormal(seed=2),
        seed=3,
        **kwargs,
    )
    layer.build((None, dim))
    dense = keras.layers.Dense(units, activation=activation, use_bias=use_bias)
    dense.build((None, dim))
    weights = [layer.kernel.numpy().T] + ([layer.bias.numpy()] if use_bias else [])
    dense.set_weights(weights)
    return layer, dense


def gaussian_blobs(seed, num_classes, dim, count, spread):
    """A Gaussian-blob classification task: x = center[y] + spread * noise."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_classes, dim)).astype(np.float32)
    y = rng.integers(0, num_classes, count).astype(np.int32)
    x = (centers[y] + spread * rng.standard_normal((count, dim))).astype(np.float32)
    return x, y


def prototype_multilabel(seed, num_labels, dim, count, max_labels, noise=0.3):
    """Multi-label task: each label has a prototype; x = sum of its labels' prototypes + noise.

    Labels are int32 [count, max_labels], -1 padded, 1..max_labels labels per example.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((num_labels, dim)).astype(np.float32)
    labels = np.full((count, max_labels), -1, np.int32)
    x = np.empty((count, dim), np.float32)
    for i in range(count):
        n = rng.integers(1, max_labels + 1)
        chosen = rng.choice(num_labels, n, replace=False)
        labels[i, :n] = chosen
        x[i] = prototypes[chosen].sum(0) + noise * rng.standard_normal(dim)
    return x, labels


def hidden_model(dim, classes, units=64, active=8, seed=2, **lsh_kwargs):
    """A hidden LSHDense with hash tables (what the rebuild callback keeps) and a Dense head."""
    lsh_kwargs.setdefault("active_rule", "frequency")
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((dim,)),
            LSHDense(
                units, activation="relu", active=active, num_tables=4, seed=seed, **lsh_kwargs
            ),
            keras.layers.Dense(classes),
        ]
    )


# ---------------------------------------------------------------------------------------------
# 1. LSHDense against keras.layers.Dense
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_inference_equals_keras_dense(activation, use_bias):
    layer, dense = lsh_and_dense(96, 24, activation, use_bias=use_bias, active=10)
    x = normal(0, 7, 24)
    step = int(layer.step.numpy())
    np.testing.assert_allclose(layer(x).numpy(), dense(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        layer(x, training=False).numpy(), dense(x).numpy(), rtol=1e-5, atol=1e-6
    )
    assert int(layer.step.numpy()) == step  # inference does not count as a training step
    assert layer.compute_output_shape((None, 24)) == (None, 96)


@pytest.mark.parametrize("row_blocks", [False, True])
@pytest.mark.parametrize(
    "initializer",
    [
        "glorot_uniform",
        "he_normal",
        "lecun_uniform",
        keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal"),
        keras.initializers.RandomNormal(stddev=0.02),
    ],
)
def test_kernel_draws_as_dense_kernels_do(initializer, row_blocks, monkeypatch):
    # Neuron-major, but the fan-in is still the input width: for a layer much wider than its
    # input, He and LeCun scales differ by sqrt(units / input_dim) if the fans are swapped.
    # Drawn in blocks of rows (as wide kernels are), each block keeps the whole kernel's fans.
    input_dim, units = 200, 3000
    if row_blocks:
        monkeypatch.setattr(lsh_dense._KernelDraw, "ROW_BLOCK_ELEMENTS", 128 * input_dim)
    lsh = LSHDense(units, kernel_initializer=initializer)
    dense = keras.layers.Dense(units, kernel_initializer=initializer)
    lsh.build((None, input_dim))
    dense.build((None, input_dim))
    assert lsh.kernel.shape == (units, input_dim)
    kernel = lsh.kernel.numpy()
    assert np.std(kernel) == pytest.approx(np.std(dense.kernel.numpy()), rel=0.03)
    for block in (kernel[:128], kernel[-128:]):
        assert np.std(block) == pytest.approx(np.std(kernel), rel=0.1)
    assert not np.array_equal(kernel[:128], kernel[128:256])  # blocks are not one draw repeated


@pytest.mark.parametrize("row_blocks", [False, True])
@pytest.mark.parametrize("initializer", ["glorot_uniform", "he_normal", "lecun_uniform"])
@pytest.mark.parametrize("input_active, fan_in", [(40, 40), (0.02, 60)])
def test_input_active_sets_the_kernels_fans(
    initializer, input_active, fan_in, row_blocks, monkeypatch
):
    # The fans are the connections that carry an example's signal: `input_active` nonzero
    # inputs into a unit, `active` units (not the candidates) out of an input. A `Dense` with
    # those fans as its shape has the distribution wanted; the default is 5-10x narrower here.
    input_dim, units, active = 3000, 2000, 20
    if row_blocks:
        monkeypatch.setattr(lsh_dense._KernelDraw, "ROW_BLOCK_ELEMENTS", 128 * input_dim)
    lsh = LSHDense(
        units,
        activation="relu",
        active=active,
        candidates=80,
        input_active=input_active,
        kernel_initializer=initializer,
    )
    lsh.build((None, input_dim))
    dense = keras.layers.Dense(active, kernel_initializer=initializer)
    dense.build((None, fan_in))
    kernel = lsh.kernel.numpy()
    assert np.std(kernel) == pytest.approx(np.std(dense.kernel.numpy()), rel=0.05)
    for block in (kernel[:128], kernel[-128:]):
        assert np.std(block) == pytest.approx(np.std(kernel), rel=0.1)


def test_input_active_beyond_the_input_width_fails_at_build():
    layer = LSHDense(100, activation="relu", active=5, input_active=500)
    with pytest.raises(ValueError, match=r"input_active = 500 must be in \[1, input_dim = 64\]"):
        layer.build((None, 64))


def test_row_block_draws_are_reproducible_and_leave_reads_uncopied(monkeypatch):
    monkeypatch.setattr(lsh_dense._KernelDraw, "ROW_BLOCK_ELEMENTS", 64 * 50)

    def kernel(seed):
        layer = LSHDense(700, kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
        layer.build((None, 50))
        return layer.kernel.numpy()

    np.testing.assert_array_equal(kernel(3), kernel(3))
    assert not np.array_equal(kernel(3), kernel(4))
    # Building a wide layer peaks at little more than its kernel: drawn whole, the kernel
    # takes three kernel-sized tensors; after a sparse write TensorFlow's copy-on-read mode
    # would copy the whole kernel on the sketch's first read. A fresh process, so that the
    # peak is this layer's.
    probe = """
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
from keras_layers import LSHDense

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

tf.ones([2]).numpy()
before = status("VmRSS")
layer = LSHDense(8192, active=16, active_rule="low_rank")
layer.build((None, 8192))  # a 256 MB kernel, drawn in 16 blocks, and its sketch fitted
print((status("VmHWM") - before) / (4 * 8192 * 8192))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=os.environ,
        cwd=tempfile.gettempdir(),  # `-c` imports from its folder first: not the checkout's
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout) < 1.5


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
def test_training_output_is_dense_output_on_the_active_units(activation):
    units, dim, active = 96, 24, 10
    layer, dense = lsh_and_dense(units, dim, activation, active=active, num_tables=6)
    x = normal(1, 9, dim)
    expected = dense(x).numpy()
    # The same step (seed) as the training call below: the same active sets.
    ids = layer.active_ids(x).numpy()
    out_ids, values = (t.numpy() for t in layer.active_outputs(x))
    step = int(layer.step.numpy())
    out = layer(x, training=True).numpy()
    assert int(layer.step.numpy()) == step + 1

    assert ids.shape == (9, active) and np.array_equal(out_ids, ids)
    for b in range(len(x)):
        assert len(set(ids[b])) == active and ids[b].min() >= 0  # distinct, filled
        np.testing.assert_allclose(values[b], expected[b, ids[b]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[b, ids[b]], expected[b, ids[b]], rtol=1e-5, atol=1e-6)
        outside = np.setdiff1d(np.arange(units), ids[b])
        assert np.all(out[b, outside] == 0.0)
        if activation == "sigmoid":  # never 0: a dense output there would show
            assert np.all(expected[b, outside] != 0.0)


def test_candidates_pass_the_largest_on_and_take_the_gradient_of_all():
    """With `candidates` beyond `active`, an example's `active` largest candidates pass forward
    and every candidate gets the gradient it would have had if it had passed (the exact rule:
    the candidates are the exact top 20, the units passed on the exact top 5)."""
    units, dim, active, candidates = 64, 16, 5, 20
    layer, dense = lsh_and_dense(
        units, dim, "relu", active=active, candidates=candidates, active_rule="exact"
    )
    x = normal(1, 7, dim)
    upstream = normal(2, 7, units)
    with tf.GradientTape() as tape:
        out = layer(x, training=True)
        loss = tf.reduce_sum(out * upstream)
    grad_kernel, grad_bias = (
        tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, [layer.kernel, layer.bias])
    )
    kernel, bias = dense.get_weights()
    pre = x @ kernel + bias
    order = np.argsort(-pre, axis=1)
    passed = np.zeros_like(pre, bool)
    np.put_along_axis(passed, order[:, :active], True, axis=1)
    selected = np.zeros_like(pre, bool)
    np.put_along_axis(selected, order[:, :candidates], True, axis=1)
    np.testing.assert_allclose(
        out.numpy(), np.where(passed, np.maximum(pre, 0), 0), rtol=1e-5, atol=1e-6
    )
    grad_pre = np.where(selected & (pre > 0), upstream, 0)
    assert (grad_pre != 0).sum() > (passed & (pre > 0)).sum()  # the candidates add gradient
    np.testing.assert_allclose(grad_kernel, (x.T @ grad_pre).T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad_bias, grad_pre.sum(0), rtol=1e-4, atol=1e-5)


def test_candidates_are_handed_on_sparsely_with_zeros():
    """`sparse_outputs` hands every candidate on (the next layer's input gradient reaches
    them), those not passed with value 0; LSH inference passes the same units."""
    layer = LSHDense(48, activation="relu", active=4, candidates=12, sparse_outputs=True, seed=3)
    x = normal(3, 6, 10)
    out = layer(x, training=True)
    rows = out.indices.numpy()[:, 0]
    assert np.array_equal(np.bincount(rows, minlength=6), np.full(6, 12))
    nonzero = np.bincount(rows[out.values.numpy() != 0], minlength=6)
    assert nonzero.max() <= 4
    inferred = tf.sparse.to_dense(tf.sparse.reorder(layer(x, training=False))).numpy()
    assert (np.count_nonzero(inferred, axis=1) <= 4).all()


def test_lsh_inference_computes_only_the_active_units():
    units, dim = 80, 16
    layer, dense = lsh_and_dense(units, dim, "sigmoid", active=12, inference="lsh")
    x = normal(2, 5, dim)
    ids = layer.active_ids(x).numpy()
    out = layer(x).numpy()
    expected = dense(x).numpy()
    assert int(layer.step.numpy()) == 0
    assert np.count_nonzero(out, axis=1).tolist() == [12] * 5
    for b in range(5):
        np.testing.assert_allclose(out[b, ids[b]], expected[b, ids[b]], rtol=1e-5, atol=1e-6)
    layer.inference = "dense"
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_lsh_inference_of_an_example_does_not_depend_on_its_batch():
    # One table of 2^10 buckets for 300 units: most buckets are empty, so most of each set is
    # random fill, seeded by the example's codes rather than its place in the batch.
    layer = LSHDense(
        300,
        activation="relu",
        active=10,
        active_rule="frequency",
        num_tables=1,
        num_hashes=10,
        inference="lsh",
    )
    x = normal(4, 24, 16)
    whole = layer(x).numpy()
    parts = np.concatenate([layer(x[:7]).numpy(), layer(x[7:]).numpy()])
    alone = np.concatenate([layer(x[i : i + 1]).numpy() for i in (3, 20)])
    np.testing.assert_array_equal(parts, whole)
    np.testing.assert_array_equal(alone, whole[[3, 20]])
    assert len({tuple(np.nonzero(row)[0]) for row in whole}) > 20  # the sets differ


@pytest.mark.parametrize(
    "hash_family, mips",
    [("srp", True), ("sparse_srp", False), ("sparse_srp", True), ("wta", False), ("dwta", False)],
)
def test_every_hash_family_computes_dense_outputs_on_its_active_units(hash_family, mips):
    units, dim = 72, 16
    layer, dense = lsh_and_dense(
        units, dim, "sigmoid", active=9, hash_family=hash_family, mips=mips, bin_size=4
    )
    x = normal(6, 5, dim)
    ids = layer.active_ids(x).numpy()
    out = layer(x, training=True).numpy()
    expected = dense(x).numpy()
    for b in range(5):
        assert len(set(ids[b])) == 9
        np.testing.assert_allclose(out[b, ids[b]], expected[b, ids[b]], rtol=1e-5, atol=1e-6)
        assert np.count_nonzero(out[b]) == 9
    if mips:
        norms = np.linalg.norm(layer.kernel.numpy(), axis=1)
        assert float(layer.tables.max_norm.numpy()) == pytest.approx(norms.max(), rel=1e-5)


@pytest.mark.parametrize("active", [1.0, 80])
def test_all_units_active_training_equals_dense(active):
    layer, dense = lsh_and_dense(80, 16, "relu", active=active, num_tables=4)
    assert layer.num_active == 80
    x = normal(3, 6, 16)
    ids = layer.active_ids(x).numpy()
    assert all(sorted(row) == list(range(80)) for row in ids)
    np.testing.assert_allclose(
        layer(x, training=True).numpy(), dense(x).numpy(), rtol=1e-5, atol=1e-6
    )


def test_batch_wide_active_set_is_shared():
    layer, dense = lsh_and_dense(64, 16, "sigmoid", active=9, batch_wide=True)
    x = normal(4, 6, 16)
    ids = layer.active_ids(x).numpy()
    assert ids.shape == (1, 9)
    out = layer(x, training=True).numpy()
    support = np.flatnonzero(np.any(out != 0, axis=0))
    assert np.array_equal(support, np.sort(ids[0]))
    np.testing.assert_allclose(out[:, ids[0]], dense(x).numpy()[:, ids[0]], rtol=1e-5, atol=1e-6)


def test_training_gradients_are_sparse_and_match_dense_on_active_rows():
    layer, dense = lsh_and_dense(64, 12, "tanh", active=6)
    x = normal(5, 4, 12)
    ids = layer.active_ids(x).numpy()
    with tf.GradientTape(persistent=True) as tape:
        loss = tf.reduce_sum(layer(x, training=True) ** 2)
        mask = np.zeros((4, 64), np.float32)
        for b in range(4):
            mask[b, ids[b]] = 1.0
        dense_loss = tf.reduce_sum((dense(x) * mask) ** 2)
    grad_kernel, grad_bias = tape.gradient(loss, [layer.kernel, layer.bias])
    ref_kernel, ref_bias = tape.gradient(dense_loss, [dense.kernel, dense.bias])
    assert isinstance(grad_kernel, tf.IndexedSlices) and isinstance(grad_bias, tf.IndexedSlices)
    assert set(grad_kernel.indices.numpy().tolist()) <= set(ids.ravel().tolist())
    np.testing.assert_allclose(
        tf.convert_to_tensor(grad_kernel).numpy(), ref_kernel.numpy().T, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        tf.convert_to_tensor(grad_bias).numpy(), ref_bias.numpy(), rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# 2. Hidden layer trained with model.fit
# ---------------------------------------------------------------------------------------------

HIDDEN_MARGIN = 0.08  # LSHDense's held-out accuracy may trail Dense's by at most this


def _blob_classifier(hidden_layers, dim, classes):
    keras.utils.set_random_seed(7)
    inputs = keras.Input((dim,))
    h = inputs
    for layer in hidden_layers:
        h = layer(h)
    outputs = keras.layers.Dense(classes, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


@pytest.fixture(scope="module")
def blobs():
    x, y = gaussian_blobs(11, num_classes=6, dim=20, count=1600, spread=1.6)
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


@pytest.fixture(scope="module")
def dense_blob_accuracy(blobs):
    (x, y), (xv, yv) = blobs
    model = _blob_classifier([keras.layers.Dense(256, activation="relu")], 20, 6)
    model.fit(x, y, batch_size=32, epochs=4, verbose=0, shuffle=False)
    return model.evaluate(xv, yv, verbose=0)[1]


@pytest.mark.parametrize("depth", [1, 2])
def test_hidden_lsh_dense_learns_as_well_as_dense(blobs, dense_blob_accuracy, depth):
    (x, y), (xv, yv) = blobs
    chance = 1 / 6
    assert dense_blob_accuracy > chance + 0.4  # the task is learnable
    layers = [
        LSHDense(256, activation="relu", active=0.25, num_tables=8, seed=3 + i)
        for i in range(depth)
    ]
    model = _blob_classifier(layers, 20, 6)
    callback = LSHRebuildCallback(period=10)
    history = model.fit(
        x, y, batch_size=32, epochs=4, verbose=0, shuffle=False, callbacks=[callback]
    )
    accuracy = model.evaluate(xv, yv, verbose=0)[1]
    assert accuracy >= dense_blob_accuracy - HIDDEN_MARGIN, (accuracy, dense_blob_accuracy)
    # 38 steps an epoch, a rebuild every 10 optimizer steps (none when training begins).
    assert history.history["lsh_rebuilds"] == [3, 7, 11, 15]
    assert callback.rebuilds == 15
    assert [int(layer.step.numpy()) for layer in layers] == [4 * 38] * depth
    assert keras_layers.lsh_layers(model) == layers
    # Evaluated with only the retrieved units, it is still far above chance.
    set_inference(model, "lsh")
    assert model.evaluate(xv, yv, verbose=0)[1] > chance + 0.3


def _sparse_hidden_stack(backward_adam=None, seed=5, backward_sgd=None, hogwild=False):
    """Dense 20 -> LSHDense(64, 8 active, sparse outputs) -> LSHDense(48, 6 active) reading
    them sparsely (its kernel updated in the backward pass if `backward_adam` or
    `backward_sgd`) -> softmax."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((20,)),
            LSHDense(64, activation="relu", active=8, sparse_outputs=True, seed=1),
            LSHDense(
                48,
                activation="relu",
                active=6,
                sparse_outputs=True,
                backward_adam=backward_adam,
                backward_sgd=backward_sgd,
                hogwild=hogwild,
                seed=2,
                name="wide",
            ),
            SparseInputDense(6, activation="softmax"),
        ]
    )
    model.compile(SparseAdam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_backward_adam_first_step_equals_the_optimizers(blobs):
    # From zero moments, Adam leaves a weight with a zero gradient where it is: one step of
    # lazy Adam per weight in the backward pass equals one of SparseAdam on whole rows.
    (x, y), _ = blobs
    by_optimizer, in_backward = _sparse_hidden_stack(), _sparse_hidden_stack(3e-3)
    wide = in_backward.get_layer("wide")
    assert all(weight is not wide.kernel for weight in in_backward.trainable_weights)
    before = wide.kernel.numpy()
    for model in (by_optimizer, in_backward):
        model.train_on_batch(x[:32], y[:32])
    assert not np.array_equal(wide.kernel.numpy(), before)
    for want_layer, got_layer in zip(by_optimizer.layers, in_backward.layers, strict=True):
        got = {weight.name: weight for weight in got_layer.weights}
        for want in want_layer.weights:
            np.testing.assert_allclose(got[want.name].numpy(), want.numpy(), rtol=1e-5, atol=1e-7)
    # The second step differs where a touched row's weights had no input: SparseAdam decays
    # their moments and moves them, the layer's own Adam leaves them alone.
    for model in (by_optimizer, in_backward):
        model.train_on_batch(x[32:64], y[32:64])
    moved = wide.kernel.numpy() != by_optimizer.get_layer("wide").kernel.numpy()
    assert 0 < moved.sum() < moved.size


def test_backward_adam_learns_and_keeps_its_moments(blobs, dense_blob_accuracy, tmp_path):
    (x, y), (xv, yv) = blobs
    model = _sparse_hidden_stack(3e-3)
    model.fit(x, y, batch_size=32, epochs=4, verbose=0, shuffle=False)
    assert model.evaluate(xv, yv, verbose=0)[1] >= dense_blob_accuracy - HIDDEN_MARGIN
    wide = model.get_layer("wide")
    assert wide.get_config()["backward_adam"] == 3e-3
    _, kernel_v = wide.backward_update.moments
    assert np.count_nonzero(kernel_v.numpy()) > 0
    assert {"kernel_m", "kernel_v"} <= {w.name for w in wide.weights}
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path).get_layer("wide")
    for got, want in zip(
        (loaded.kernel, *loaded.backward_update.moments),
        (wide.kernel, *wide.backward_update.moments),
        strict=True,
    ):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_backward_sgd_step_is_the_kernels_gradient_times_the_learning_rate(blobs):
    (x, y), _ = blobs
    x, y = x[:32], y[:32]
    by_optimizer, in_backward = _sparse_hidden_stack(), _sparse_hidden_stack(backward_sgd=0.5)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy()(y, by_optimizer(x, training=True))
    want_kernel = by_optimizer.get_layer("wide").kernel
    gradient = tf.convert_to_tensor(tape.gradient(loss, want_kernel)).numpy()
    assert np.count_nonzero(gradient) > 10
    wide = in_backward.get_layer("wide")
    before = wide.kernel.numpy()
    np.testing.assert_array_equal(before, want_kernel.numpy())
    in_backward.train_on_batch(x, y)
    np.testing.assert_allclose(wide.kernel.numpy(), before - 0.5 * gradient, rtol=1e-5, atol=1e-6)
    untouched = gradient == 0
    np.testing.assert_array_equal(wide.kernel.numpy()[untouched], before[untouched])


@pytest.mark.parametrize("hogwild", [False, True])
def test_backward_sgd_learns_keeps_no_moments_and_round_trips(blobs, tmp_path, hogwild):
    (x, y), (xv, yv) = blobs
    model = _sparse_hidden_stack(backward_sgd=0.05, hogwild=hogwild)
    model.fit(x, y, batch_size=32, epochs=4, verbose=0, shuffle=False)
    assert model.evaluate(xv, yv, verbose=0)[1] > 0.6  # six classes: chance is 1/6
    wide = model.get_layer("wide")
    names = {w.name for w in wide.weights}
    assert "kernel" in names and not names & {"kernel_m", "kernel_v"}
    config = wide.get_config()
    assert (config["backward_sgd"], config["backward_adam"]) == (0.05, None)
    assert config["hogwild"] is hogwild
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path).get_layer("wide")
    assert loaded.backward_update.argument == "backward_sgd=0.05"
    assert loaded.hogwild is hogwild
    np.testing.assert_array_equal(loaded.kernel.numpy(), wide.kernel.numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backward_adam": "fast"}, "backward_adam must be None or a learning rate"),
        ({"backward_adam": 0.0}, "backward_adam must be > 0, got 0.0"),
        ({"backward_adam": 1e-3, "use_bias": False}, "backward_adam needs use_bias=True"),
        (
            {"backward_adam": 1e-3, "kernel_regularizer": "l2"},
            "backward_adam updates the kernel without the optimizer",
        ),
        ({"backward_sgd": -1.0}, "backward_sgd must be > 0, got -1.0"),
        ({"backward_sgd": 0.1, "use_bias": False}, "backward_sgd needs use_bias=True"),
        (
            {"backward_adam": 1e-3, "backward_sgd": 0.1},
            "give at most one of backward_adam and backward_sgd",
        ),
        ({"backward_adam": 1e-3, "hogwild": True}, "hogwild=True is a way of applying backward"),
        ({"backward_sgd": 0.1, "hogwild": 1}, "hogwild must be True or False, got 1"),
    ],
)
def test_backward_adam_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=f"LSHDense: {message}"):
        LSHDense(16, activation="relu", **kwargs)


@pytest.mark.parametrize("rule", ["adam", "sgd"])
def test_backward_updates_name_dense_inputs_and_classifier_heads(rule):
    argument = {f"backward_{rule}": 1e-3}
    layer = LSHDense(16, activation="relu", active=4, name="h", **argument)
    with pytest.raises(ValueError, match=f"LSHDense 'h': backward_{rule}=0.001 .* dense inputs"):
        layer(tf.ones([2, 5]), training=True)
    assert layer(tf.ones([2, 5])).shape == (2, 16)  # inference reads the kernel as usual
    with pytest.raises(
        ValueError, match=f"LSHClassifier: the head's kernel .* got backward_{rule}=0.001"
    ):
        LSHClassifier(keras.Sequential([keras.layers.Dense(4)]), LSHDense(10, **argument))


# ---------------------------------------------------------------------------------------------
# 3. Output layer: LSHClassifier
# ---------------------------------------------------------------------------------------------

NUM_LABELS = 200


@pytest.fixture(scope="module")
def multilabel():
    x, labels = prototype_multilabel(21, NUM_LABELS, dim=32, count=3000, max_labels=3)
    return (x[:2500], labels[:2500]), (x[2500:], labels[2500:])


@pytest.fixture(scope="module")
def classifier(multilabel):
    (x, labels), _ = multilabel
    keras.utils.set_random_seed(0)
    body = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu")])
    head = LSHDense(NUM_LABELS, active=20, num_tables=8, seed=5)
    model = LSHClassifier(body, head, top_k=3, lsh_recall_k=5)
    model.compile(optimizer=SparseAdam(3e-3), metrics=[PrecisionAtK(1), PrecisionAtK(3)])
    history = model.fit(
        x,
        labels,
        batch_size=64,
        epochs=5,
        verbose=0,
        shuffle=False,
        callbacks=[LSHRebuildCallback(period=10)],
    )
    return model, history.history


@pytest.fixture
def dense_mode(classifier):
    """Leaves the shared classifier in dense inference whatever the test did."""
    yield classifier[0]
    set_inference(classifier[0], "dense")


def test_classifier_trains_well_above_chance(classifier, multilabel):
    model, history = classifier
    _, (xv, labels) = multilabel
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    assert history["lsh_rebuilds"][-1] > 5
    assert "lsh_recall@5" not in history  # measured by evaluation only, not a training 0.0
    chance = 2 / NUM_LABELS  # 2 labels on average
    results = model.evaluate(xv, labels, verbose=0, return_dict=True)
    assert results["P@1"] > 0.6, results  # exact (dense) inference
    assert results["P@1"] > 50 * chance


def test_classifier_evaluates_in_both_modes(dense_mode, multilabel):
    model = dense_mode
    _, (xv, labels) = multilabel
    dense = model.evaluate(xv, labels, batch_size=len(xv), verbose=0, return_dict=True)
    set_inference(model, "lsh")
    assert model.head.inference == "lsh"
    lsh = model.evaluate(xv, labels, batch_size=len(xv), verbose=0, return_dict=True)
    for results in (dense, lsh):
        assert set(results) == {"loss", "P@1", "P@3", "lsh_recall@5"}
        assert all(np.isfinite(v) for v in results.values())
        assert 0.0 <= results["lsh_recall@5"] <= 1.0
    assert lsh["P@1"] > 10 * 2 / NUM_LABELS  # retrieval still beats chance by far
    assert lsh["P@1"] <= dense["P@1"] + 0.05

    # lsh_recall@5 is the fraction of the exact top 5 the active sets held (one batch: the
    # same query seed as evaluate).
    features = model.body(xv)
    logits = features.numpy() @ model.head.kernel.numpy().T + model.head.bias.numpy()
    exact = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    active = model.head.active_ids(features).numpy()
    recall = np.mean([np.isin(exact[b], active[b]).mean() for b in range(len(xv))])
    assert lsh["lsh_recall@5"] == pytest.approx(recall, abs=1e-5)
    assert dense["lsh_recall@5"] == pytest.approx(recall, abs=1e-5)


def test_predict_top_k_in_both_modes(dense_mode, multilabel):
    model = dense_mode
    _, (xv, _) = multilabel
    x = xv[:7]
    ids, scores = (t.numpy() for t in model.predict_top_k(x, k=4))
    assert ids.shape == (7, 4) and scores.shape == (7, 4)
    logits = model.predict(x, verbose=0)
    assert logits.shape == (7, NUM_LABELS)
    np.testing.assert_allclose(scores, np.sort(logits, axis=1)[:, ::-1][:, :4], rtol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(logits, ids, 1), scores, rtol=1e-5)

    set_inference(model, "lsh")
    ids, scores = (t.numpy() for t in model.predict_top_k(x, k=4))
    assert ids.shape == (7, 4) and scores.shape == (7, 4)
    active = model.head.active_ids(model.body(x)).numpy()
    assert all(set(ids[b]) <= set(active[b]) for b in range(7))
    assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_allclose(np.take_along_axis(logits, ids, 1), scores, rtol=1e-5, atol=1e-5)
    assert model.predict(x, verbose=0).shape == (7, NUM_LABELS)


def test_labels_are_in_the_active_set_and_first(classifier, multilabel):
    model, _ = classifier
    _, (xv, labels) = multilabel
    labels = labels[:50]
    ids = model.head.active_ids(model.body(xv[:50]), labels).numpy()
    assert ids.shape == (50, model.head.num_active)
    for b in range(50):
        row_labels = labels[b][labels[b] >= 0]
        assert set(ids[b, : len(row_labels)]) == set(row_labels), (ids[b], labels[b])
        assert len(set(ids[b])) == len(ids[b])  # no duplicates, labels included only once


def test_lsh_classifier_with_sparse_input_dense_body():
    """The README's model: a SparseInputDense body on tf.SparseTensor bags of features."""
    rng = np.random.default_rng(31)
    count, num_features, num_labels = 512, 300, 100
    labels = rng.integers(0, num_labels, (count, 1)).astype(np.int32)
    label_features = rng.integers(0, num_features, (num_labels, 5))
    x = np.zeros((count, num_features), np.float32)
    for i in range(count):
        x[i, label_features[labels[i, 0]]] = 1.0
        x[i, rng.integers(0, num_features, 3)] += 1.0
    data = tf.data.Dataset.from_tensor_slices((tf.sparse.from_dense(x), labels)).batch(64)
    keras.utils.set_random_seed(0)
    model = LSHClassifier(
        SparseInputDense(32, activation="relu"),
        LSHDense(num_labels, active=20, num_tables=8, seed=1),
    )
    model.compile(optimizer=SparseAdam(1e-2), metrics=[PrecisionAtK(1)])
    model.fit(data, epochs=4, verbose=0, shuffle=False, callbacks=[LSHRebuildCallback(period=4)])
    assert model.evaluate(data, verbose=0, return_dict=True)["P@1"] > 0.5  # chance: 0.01


# ---------------------------------------------------------------------------------------------
# 4. SparseAdam (and SGD) on sparse gradients
# ---------------------------------------------------------------------------------------------


def lazy_adam_reference(w, m, v, indices, values, t, lr, beta_1, beta_2, epsilon):
    """One lazy-Adam step in float64 NumPy (Keras' Adam formula on the touched rows)."""
    w, m, v = (a.astype(np.float64).copy() for a in (w, m, v))
    rows = np.unique(indices)
    g = np.zeros((len(rows),) + w.shape[1:])
    np.add.at(g, np.searchsorted(rows, indices), values)  # duplicates summed
    alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
    m[rows] += (g - m[rows]) * (1 - beta_1)
    v[rows] += (g**2 - v[rows]) * (1 - beta_2)
    w[rows] -= alpha * m[rows] / (np.sqrt(v[rows]) + epsilon)
    return w, m, v


def test_sparse_adam_is_lazy_adam():
    lr, beta_1, beta_2, epsilon = 0.05, 0.8, 0.95, 1e-7
    w0 = normal(40, 12, 5)
    var = keras.Variable(w0.copy(), name="w")
    optimizer = SparseAdam(lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
    optimizer.build([var])
    momentum, velocity = optimizer._momentums[0], optimizer._velocities[0]
    ref = (w0, np.zeros_like(w0), np.zeros_like(w0))
    # With duplicates (grouped and summed), then sorted distinct rows (as sparse_gather_matmul's
    # gradients are: the kernel's direct path), then distinct but unsorted.
    steps = [[1, 3, 1, 7, 3, 1], [3, 10, 10], [0, 7, 11, 7], [2, 5, 9, 11], [9, 2]]
    for t, indices in enumerate(steps, start=1):
        before = [a.numpy().copy() for a in (var, momentum, velocity)]
        values = normal(40 + t, len(indices), 5)
        gradient = tf.IndexedSlices(
            tf.constant(values), tf.constant(indices, tf.int32), tf.constant([12, 5])
        )
        optimizer.apply_gradients([(gradient, var)])
        assert int(optimizer.iterations.numpy()) == t
        ref = lazy_adam_reference(*ref, np.array(indices), values, t, lr, beta_1, beta_2, epsilon)
        untouched = np.setdiff1d(np.arange(12), indices)
        for after, old, expected in zip((var, momentum, velocity), before, ref, strict=True):
            after = after.numpy()
            assert np.array_equal(after[untouched], old[untouched])  # bit-identical
            np.testing.assert_allclose(after, expected, rtol=2e-5, atol=1e-6)
            assert not np.array_equal(after[indices], old[indices])


def test_sparse_adam_on_dense_gradients_is_keras_adam():
    w0, b0 = normal(50, 6, 4), normal(51, 4)
    results = []
    for optimizer in (SparseAdam(0.01), keras.optimizers.Adam(0.01)):
        w, b = keras.Variable(w0.copy()), keras.Variable(b0.copy())
        for t in range(3):
            grads = [tf.constant(normal(60 + t, 6, 4)), tf.constant(normal(70 + t, 4))]
            optimizer.apply_gradients(zip(grads, [w, b], strict=True))
        results.append([w.numpy(), b.numpy()] + [v.numpy() for v in optimizer.variables[2:]])
    for sparse, keras_adam in zip(*results, strict=True):
        np.testing.assert_array_equal(sparse, keras_adam)  # the same code path: same bits


def test_sparse_adam_with_beta_1_zero_keeps_no_first_moment(tmp_path):
    """With beta_1 = 0 the first moment would be the gradient: none is kept, and the updates
    are Adam's (lazy on sparse gradients, Keras' on dense ones) with m = gradient."""
    lr, beta_2, epsilon = 0.05, 0.95, 1e-7
    w0, b0 = normal(80, 12, 5), normal(81, 5)
    w, b = keras.Variable(w0.copy(), name="w"), keras.Variable(b0.copy(), name="b")
    optimizer = SparseAdam(lr, beta_1=0.0, beta_2=beta_2, epsilon=epsilon)
    assert not optimizer.keeps_first_moment and SparseAdam(beta_1=0.1).keeps_first_moment
    optimizer.build([w, b])
    assert [optimizer.moments(x)[0] for x in (w, b)] == [None, None]
    assert len(optimizer.variables) == 4  # iterations, learning rate, a velocity each
    keras_adam = keras.optimizers.Adam(lr, beta_1=0.0, beta_2=beta_2, epsilon=epsilon)
    dense_b = keras.Variable(b0.copy())
    ref = (w0, np.zeros_like(w0), np.zeros_like(w0))
    for t, indices in enumerate([[1, 3, 1, 7], [3, 10], [0, 7, 11]], start=1):
        values, bias_grad = normal(90 + t, len(indices), 5), normal(95 + t, 5)
        gradient = tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([12, 5]))
        optimizer.apply_gradients([(gradient, w), (tf.constant(bias_grad), b)])
        keras_adam.apply_gradients([(tf.constant(bias_grad), dense_b)])
        ref = lazy_adam_reference(*ref, np.array(indices), values, t, lr, 0.0, beta_2, epsilon)
        np.testing.assert_allclose(w.numpy(), ref[0], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(optimizer.moments(w)[1].numpy(), ref[2], rtol=2e-5, atol=1e-9)
        np.testing.assert_allclose(b.numpy(), dense_b.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(w.numpy()[[2, 4]], w0[[2, 4]])  # rows never touched
    # The state round-trips through a .keras file.
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile(optimizer=SparseAdam(1e-2, beta_1=0.0), loss="mse")
    model.fit(normal(82, 16, 6), normal(83, 16, 3), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables) == 4
    for a, c in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), c.numpy(), err_msg=a.path)


def test_sparse_adam_with_beta_1_zero_reads_a_state_saved_with_first_moments(tmp_path, monkeypatch):
    """A .keras file of a SparseAdam(beta_1=0) saved while it still kept first moments loads
    into one that keeps none: the moments are skipped, everything else restored."""
    x = tf.sparse.from_dense((normal(84, 16, 30) > 1).astype(np.float32))
    y = normal(85, 16, 3)

    def trained_model():
        model = keras.Sequential(
            [keras.Input((30,), sparse=True), SparseInputDense(8), keras.layers.Dense(3)]
        )
        optimizer = SparseAdam(1e-2, beta_1=0.0, feature_rows="rowwise_rmsprop")
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        return model

    with monkeypatch.context() as patch:  # as SparseAdam built its state before
        patch.setattr(SparseAdam, "keeps_first_moment", property(lambda self: True))
        old = trained_model()
    old_optimizer = old.optimizer
    # One momentum per variable not updated by rows: the first layer's bias, Dense's two.
    assert sum("momentum" in v.path for v in old_optimizer.variables) == 3
    old.save(tmp_path / "old.keras")
    with warnings.catch_warnings():
        # Keras warns, and loads nothing, when the saved state does not match the optimizer's.
        warnings.filterwarnings("error", message="Skipping variable loading")
        loaded = keras.models.load_model(tmp_path / "old.keras")
    new_optimizer = loaded.optimizer
    assert not any("momentum" in v.path for v in new_optimizer.variables)
    kept = [v for v in old_optimizer.variables if "momentum" not in v.path]
    assert len(kept) == len(new_optimizer.variables)
    for a, b in zip(kept, new_optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert int(new_optimizer.iterations) == 2


def test_sparse_adam_rejects_amsgrad():
    with pytest.raises(ValueError, match="amsgrad"):
        SparseAdam(amsgrad=True)


def _feature_rows_model(sparse_inputs, num_features=30, units=4):
    """SparseInputDense alone, trained under SparseAdam's rowwise rule for its kernel."""
    return keras.Sequential(
        [
            keras.Input((num_features,), sparse=sparse_inputs),
            SparseInputDense(units, use_bias=False, name="first"),
        ]
    )


@pytest.mark.parametrize("sparse_inputs", [True, False], ids=["sparse", "dense"])
def test_sparse_adam_feature_rows_is_lazy_rowwise_rmsprop(sparse_inputs):
    lr, beta_2, epsilon = 0.1, 0.9, 1e-7
    x = (np.random.default_rng(3).random((6, 30)) < 0.2).astype(np.float32) * normal(4, 6, 30)
    x[:, 7] = 0.0  # a feature no example has
    y = normal(5, 6, 4)
    model = _feature_rows_model(sparse_inputs)
    optimizer = SparseAdam(lr, beta_2=beta_2, epsilon=epsilon, feature_rows="rowwise_rmsprop")
    model.compile(optimizer=optimizer, loss="mse")
    kernel0 = model.layers[0].kernel.numpy().copy()
    inputs = tf.sparse.from_dense(x) if sparse_inputs else x
    model.train_on_batch(inputs, y)
    m, v = optimizer.moments(model.layers[0].kernel)
    assert m is None and tuple(v.shape) == (30, 1)
    # Keras' mean squared error: the output's gradient is 2 (out - y) / (batch * units).
    g = x.T @ (2 * (x @ kernel0 - y) / y.size)
    want_v = (1 - beta_2) * np.mean(g * g, axis=1)
    want_kernel = kernel0 - lr * np.sqrt(1 - beta_2) * g / (np.sqrt(want_v)[:, None] + epsilon)
    np.testing.assert_allclose(v.numpy()[:, 0], want_v, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), want_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.layers[0].kernel.numpy()[7], kernel0[7])


def test_sparse_adam_feature_rows_keeps_adam_for_other_variables_and_round_trips(tmp_path):
    x = tf.sparse.from_dense((normal(6, 16, 30) > 1).astype(np.float32))
    model = keras.Sequential(
        [keras.Input((30,), sparse=True), SparseInputDense(8), keras.layers.Dense(3)]
    )
    model.compile(optimizer=SparseAdam(1e-2, feature_rows="rowwise_rmsprop"), loss="mse")
    model.fit(x, normal(7, 16, 3), batch_size=8, epochs=1, verbose=0)
    optimizer = model.optimizer
    shapes = {v.path: tuple(v.shape) for v in optimizer.variables}
    kernel = model.layers[0].kernel
    assert optimizer.moments(kernel)[0] is None
    assert [s for p, s in shapes.items() if "velocity" in p and s[-1] == 1] == [(30, 1)]
    dense_m, dense_v = optimizer.moments(model.layers[1].kernel)  # plain Adam
    assert tuple(dense_m.shape) == tuple(dense_v.shape) == (8, 3)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.feature_rows == "rowwise_rmsprop"
    for a, b in zip(optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert SparseAdam.from_config(optimizer.get_config()).feature_rows == "rowwise_rmsprop"


def test_sparse_adam_rejects_an_unknown_feature_rows_rule():
    with pytest.raises(
        ValueError, match="SparseAdam: feature_rows must be one of .* got 'rowwise'"
    ):
        SparseAdam(feature_rows="rowwise")


def _train_unfused_and_fused(make_model, fit, fused_op, steps, optimizer=lambda: SparseAdam(3e-3)):
    """Trains `make_model(fuse)` with `fit`, unfused then fused, from the same seed; asserts
    that `tf_lsh_ops.<fused_op>` was traced into the step only when fusing and that both end
    with the same weights and optimizer state, bit for bit. Returns the fused model."""
    calls = []
    real = getattr(tf_lsh_ops, fused_op)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    models = []
    for fuse in (False, True):
        keras.utils.set_random_seed(0)
        model = make_model(fuse)
        model.compile(optimizer=optimizer())
        setattr(tf_lsh_ops, fused_op, counting)
        try:
            fit(model)
        finally:
            setattr(tf_lsh_ops, fused_op, real)
        assert bool(calls) == fuse
        models.append(model)
    plain, fused = models
    assert int(fused.optimizer.iterations) == int(plain.optimizer.iterations) == steps
    for a, b in zip(
        plain.weights + plain.optimizer.variables,
        fused.weights + fused.optimizer.variables,
        strict=True,
    ):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    return fused


def _step_op_types(model, batch):
    step = tf.function(model.train_step).get_concrete_function(batch)
    return [op.type for op in step.graph.get_operations()]


@pytest.mark.parametrize("beta_1", [0.9, 0.0], ids=["adam", "no_first_moment"])
def test_fused_output_update_equals_the_unfused_step_bit_for_bit(multilabel, beta_1):
    """The head's backward pass fused with SparseAdam gives the weights and moments (and the
    body's) of the plain gradient + apply_gradients path, exactly; with beta_1 = 0 the fused
    op keeps no first moments."""
    (x, labels), _ = multilabel

    def make_model(fuse):
        body = keras.Sequential([keras.Input((32,)), keras.layers.Dense(16, activation="relu")])
        head = LSHDense(NUM_LABELS, active=20, num_tables=4, seed=5)
        return LSHClassifier(body, head, fuse_output_update=fuse)

    def fit(model):
        model.fit(x[:640], labels[:640], batch_size=64, epochs=2, verbose=0, shuffle=False)

    fused = _train_unfused_and_fused(
        make_model,
        fit,
        "sparse_gather_matmul_adam",
        steps=20,
        optimizer=lambda: SparseAdam(3e-3, beta_1=beta_1),
    )
    # The fused step runs no unfused gradient of the head besides (ops that read variables
    # stay in a graph even when their outputs are unused, so it would run and cost as much).
    op_types = _step_op_types(fused, (tf.constant(x[:64]), tf.constant(labels[:64])))
    fused_op = "ResourceSparseGatherMatmulGradAdam" + ("" if beta_1 else "NoMomentum")
    assert op_type(fused_op) in op_types
    assert op_type("ResourceSparseGatherMatmulGrad") not in op_types


def _bags_of_features(seed, count=512, num_features=300, num_labels=100):
    """Bags of features (a few per label, plus noise) as tf.SparseTensor rows, with labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, (count, 2)).astype(np.int32)
    labels[::3, 1] = -1  # some examples have one label
    label_features = rng.integers(0, num_features, (num_labels, 5))
    x = np.zeros((count, num_features), np.float32)
    for i in range(count):
        for label in labels[i][labels[i] >= 0]:
            x[i, label_features[label]] = 1.0
        x[i, rng.integers(0, num_features, 3)] += rng.random(3).astype(np.float32)
    return x, labels


@pytest.mark.parametrize(
    "body_kind, beta_1", [("layer", 0.9), ("sequential", 0.9), ("sequential", 0.0)]
)
@pytest.mark.parametrize("batch_wide", [False, True], ids=["per_example", "batch_wide"])
def test_fused_first_layer_update_equals_the_unfused_step_bit_for_bit(
    body_kind, beta_1, batch_wide
):
    """A SparseInputDense first layer's gradient fused with SparseAdam (with the head's fused
    update or without it) gives the weights and moments of the unfused step, exactly."""
    x, labels = _bags_of_features(41)
    data = tf.data.Dataset.from_tensor_slices((tf.sparse.from_dense(x), labels)).batch(64)

    def make_model(fuse):
        first = SparseInputDense(24, activation="relu", bias_initializer="random_normal")
        body = (
            first
            if body_kind == "layer"
            else keras.Sequential(
                [keras.Input((300,), sparse=True), first, keras.layers.Dense(16, "tanh")]
            )
        )
        # One set per batch holds the batch's labels (up to 64 distinct) first.
        active = 80 if batch_wide else 30
        head = LSHDense(100, active=active, num_tables=4, seed=5, batch_wide=batch_wide)
        return LSHClassifier(body, head, fuse_first_layer_update=fuse)

    fused = _train_unfused_and_fused(
        make_model,
        lambda model: model.fit(data, epochs=2, verbose=0),
        "sparse_input_matmul_adam",
        steps=16,
        optimizer=lambda: SparseAdam(3e-3, beta_1=beta_1),
    )
    # The fused step computes the first layer's kernel gradient once, in the fused op.
    op_types = _step_op_types(fused, next(iter(data)))
    suffix = "" if beta_1 else "NoMomentum"
    assert op_type("ResourceSparseInputMatmulGradAdam" + suffix) in op_types
    assert op_type("ResourceSparseInputMatmulGrad") not in op_types
    head_op = op_type("ResourceSparseGatherMatmulGradAdam" + suffix)
    assert (head_op in op_types) == (not batch_wide)


def test_fused_first_layer_rowwise_update_equals_the_unfused_step_bit_for_bit():
    """Under SparseAdam(feature_rows="rowwise_rmsprop") the first layer's fused update is the
    rowwise rule's, and gives the unfused step's kernel and moments exactly."""
    x, labels = _bags_of_features(43)
    data = tf.data.Dataset.from_tensor_slices((tf.sparse.from_dense(x), labels)).batch(64)

    def make_model(fuse):
        first = SparseInputDense(24, activation="relu")
        head = LSHDense(100, active=80, num_tables=4, seed=5, batch_wide=True)
        return LSHClassifier(first, head, fuse_first_layer_update=fuse)

    fused = _train_unfused_and_fused(
        make_model,
        lambda model: model.fit(data, epochs=2, verbose=0),
        "sparse_input_matmul_rowwise_rmsprop",
        steps=16,
        optimizer=lambda: SparseAdam(3e-3, feature_rows="rowwise_rmsprop"),
    )
    op_types = _step_op_types(fused, next(iter(data)))
    assert op_type("ResourceSparseInputMatmulGradRowwiseRmsprop") in op_types
    assert op_type("ResourceSparseInputMatmulGradAdam") not in op_types


def test_first_layer_fusion_stays_off_where_it_would_change_training():
    sparse = tf.sparse.from_dense(tf.ones([2, 8]))
    for layer, optimizer in [
        (SparseInputDense(4), SparseAdam(1e-3, clipnorm=1.0)),
        (SparseInputDense(4), keras.optimizers.SGD(0.1)),
        (SparseInputDense(4, kernel_regularizer="l2"), SparseAdam(1e-3)),
        (SparseInputDense(4, activity_regularizer="l2"), SparseAdam(1e-3)),
    ]:
        assert layer.fused_update(optimizer, sparse) is None
    layer = SparseInputDense(4)
    assert layer.fused_update(SparseAdam(1e-3), sparse) is not None
    assert layer.fused_update(SparseAdam(1e-3), tf.ones([2, 8])) is None  # a plain matmul
    # The model asks the first layer only, and only if allowed to.
    for body, kwargs, fused in [
        (SparseInputDense(4), {}, True),
        (keras.Sequential([SparseInputDense(4), keras.layers.Dense(3)]), {}, True),
        (SparseInputDense(4), {"fuse_first_layer_update": False}, False),
        (keras.Sequential([keras.layers.Dense(4)]), {}, False),
    ]:
        model = LSHClassifier(body, LSHDense(50, active=5), **kwargs)
        model.compile(optimizer=SparseAdam(1e-3))
        assert (model._first_layer_update(sparse) is not None) == fused
    # A body of a bias-free first layer alone leaves nothing else for apply_gradients (which
    # counts the step) when the head is fused too: the head then stays unfused.
    model = LSHClassifier(SparseInputDense(4, use_bias=False), LSHDense(50, active=5))
    model.compile(optimizer=SparseAdam(1e-3))
    model.build((None, 8))
    assert not model._can_fuse_head(tf.zeros([2, 4]), model._first_layer_update(sparse))


def test_fusion_stays_off_where_it_would_change_training():
    for head, optimizer in [
        (LSHDense(50, active=5), SparseAdam(1e-3, clipnorm=1.0)),
        (LSHDense(50, active=5), keras.optimizers.SGD(0.1)),
        (LSHDense(50, active=5, kernel_regularizer="l2"), SparseAdam(1e-3)),
        (LSHDense(50, active=5, use_bias=False), SparseAdam(1e-3)),
        (LSHDense(50, active=5, batch_wide=True), SparseAdam(1e-3)),
    ]:
        assert head.fused_update(optimizer) is None
    assert LSHDense(50, active=5).fused_update(SparseAdam(1e-3)) is not None
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        assert LSHDense(50, active=5).fused_update(SparseAdam(1e-3)) is None
    body = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model = LSHClassifier(body, LSHDense(50, active=5))
    model.compile(optimizer=SparseAdam(1e-3))
    model.build((None, 8))
    assert model._can_fuse_head(tf.zeros([2, 8]), None)
    assert not model._can_fuse_head(tf.sparse.from_dense(tf.zeros([2, 8])), None)


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda: keras.optimizers.SGD(0.1), lambda: SparseAdam(0.01)],
    ids=["sgd", "sparse_adam"],
)
def test_fit_leaves_untouched_lsh_rows_bit_identical(make_optimizer):
    x, y = gaussian_blobs(80, num_classes=3, dim=12, count=64, spread=1.0)
    # Without random fill the active sets depend on the inputs and the tables only, so
    # active_ids before fit names every row the two steps can touch.
    model = hidden_model(12, 3, units=200, active=5, fill_random=False)
    optimizer = make_optimizer()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    layer = model.layers[0]
    touched = np.unique(layer.active_ids(x).numpy())
    touched = touched[touched >= 0]
    assert 0 < len(touched) < 200
    before = [layer.kernel.numpy().copy(), layer.bias.numpy().copy()]
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    untouched = np.setdiff1d(np.arange(200), touched)
    for var, old in zip((layer.kernel, layer.bias), before, strict=True):
        assert np.array_equal(var.numpy()[untouched], old[untouched])
    changed = np.flatnonzero(np.any(layer.kernel.numpy() != before[0], axis=1))
    assert len(changed) > 0 and set(changed) <= set(touched)
    if isinstance(optimizer, SparseAdam):
        index = optimizer._get_variable_index(layer.kernel)
        for slot in (optimizer._momentums[index], optimizer._velocities[index]):
            assert np.all(slot.numpy()[untouched] == 0.0)
            assert np.any(slot.numpy()[touched] != 0.0)


# ---------------------------------------------------------------------------------------------
# 5. SparseInputDense
# ---------------------------------------------------------------------------------------------


def sparse_batch(seed, rows, cols):
    """A SparseTensor with an empty middle row and two trailing empty rows, and its dense."""
    rng = np.random.default_rng(seed)
    dense = ((rng.random((rows, cols)) < 0.2) * rng.standard_normal((rows, cols))).astype(
        np.float32
    )
    dense[0, 0] = 1.5  # at least one feature in the first row
    dense[2] = 0.0
    dense[-2:] = 0.0
    return tf.sparse.from_dense(dense), dense


@pytest.mark.parametrize("activation", [None, "relu"])
def test_sparse_input_dense_equals_dense_matmul(activation):
    sparse, dense = sparse_batch(90, 8, 40)
    layer = SparseInputDense(6, activation=activation, bias_initializer="random_normal")
    out = layer(sparse).numpy()
    expected = dense @ layer.kernel.numpy() + layer.bias.numpy()
    if activation == "relu":
        expected = np.maximum(expected, 0)
    assert out.shape == (8, 6)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    bias = layer.bias.numpy() if activation is None else np.maximum(layer.bias.numpy(), 0)
    for row in (2, 6, 7):  # empty rows, the last two trailing: bias only
        np.testing.assert_array_equal(out[row], bias)
    np.testing.assert_allclose(layer(dense).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_sparse_input_dense_reorders_and_keeps_the_batch_size():
    # Unsorted indices, and no feature at all past row 0 of a batch of 4.
    sparse = tf.SparseTensor([[0, 3], [0, 1]], [2.0, -1.0], [4, 5])
    layer = SparseInputDense(3, bias_initializer="ones")
    out = layer(sparse).numpy()
    kernel = layer.kernel.numpy()
    np.testing.assert_allclose(out[0], 2 * kernel[3] - kernel[1] + 1, rtol=1e-6)
    np.testing.assert_array_equal(out[1:], np.ones((3, 3), np.float32))


def test_sparse_input_dense_kernel_gradient_is_indexed_slices():
    sparse, dense = sparse_batch(91, 8, 40)
    layer = SparseInputDense(6, bias_initializer="random_normal")
    upstream = normal(92, 8, 6)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(sparse) * upstream)
    grad_kernel, grad_bias = tape.gradient(loss, [layer.kernel, layer.bias])
    assert isinstance(grad_kernel, tf.IndexedSlices)
    features = np.unique(sparse.indices.numpy()[:, 1])
    assert set(grad_kernel.indices.numpy().tolist()) <= set(features.tolist())
    np.testing.assert_allclose(
        tf.convert_to_tensor(grad_kernel).numpy(), dense.T @ upstream, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(grad_bias.numpy(), upstream.sum(0), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# 9. LSHRebuildCallback schedules
# ---------------------------------------------------------------------------------------------


class CodesRecorder(keras.callbacks.Callback):
    """After every step (and LSHRebuildCallback's event), the layer's stored codes and tables."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.codes, self.fresh_codes, self.tables = [], [], []

    def on_train_batch_end(self, batch, logs=None):
        layer = self.layer
        self.codes.append(layer.tables.codes.numpy().copy())
        self.fresh_codes.append(layer.tables.hash(layer.kernel.value, "data").numpy())
        self.tables.append(layer.tables.ids.numpy().copy())


def _callback_fit(callback, learning_rate=0.05, steps=16, recorder=False, **lsh_kwargs):
    x, y = gaussian_blobs(100, num_classes=3, dim=12, count=8 * steps, spread=1.0)
    model = hidden_model(12, 3, **lsh_kwargs)
    model.compile(
        SparseAdam(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    callbacks = [callback]
    if recorder:
        callbacks.append(CodesRecorder(model.layers[0]))
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
    return model, history.history, callbacks[-1]


def test_fixed_schedule_rebuilds_every_period_steps():
    callback = LSHRebuildCallback(period=3, rehash="all")
    model, history, recorder = _callback_fit(callback, steps=15, recorder=True)
    # Every 3 optimizer steps; none when training begins (the tables come with the model).
    assert [step for step, _ in callback.events] == [3, 6, 9, 12, 15]
    assert history["lsh_rebuilds"] == [5] and callback.rebuilds == 5
    events = {3, 6, 9, 12, 15}
    changes = 0
    for step in range(1, 16):
        codes = recorder.codes[step - 1]
        if step in events:  # rebuilt from the weights of this step
            assert np.array_equal(codes, recorder.fresh_codes[step - 1]), step
            changes += not np.array_equal(codes, recorder.codes[step - 2])
        elif step > 1:  # untouched between events
            assert np.array_equal(codes, recorder.codes[step - 2]), step
            assert np.array_equal(recorder.tables[step - 1], recorder.tables[step - 2]), step
    assert changes > 0  # the weights moved enough to move some units
    # The tables are a full rebuild of the final weights.
    layer = model.layers[0]
    tables = [layer.tables.ids.numpy(), layer.tables.counts.numpy()]
    layer.tables.rebuild()
    assert np.array_equal(tables[0], layer.tables.ids.numpy())
    assert np.array_equal(tables[1], layer.tables.counts.numpy())


def test_changed_rehash_moves_the_units_that_trained(capsys):
    """rehash="changed" (the default): each event re-hashes exactly the units whose weights
    changed since the last one, every third rebuilds them all, and the tables end as a full
    rebuild's (no bucket overflows)."""
    callback = LSHRebuildCallback(period=3, verbose=1)
    assert callback.rehash == "changed" and callback.full_rebuild_every == 3
    fingerprints = []

    class Fingerprints(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            fingerprints.append(tf_lsh_ops.row_fingerprints(self.model.layers[0].kernel).numpy())

    # At most 3 steps x 8 examples x 8 active units move between events: under half of 400,
    # so refresh_tables moves them rather than rebuilding.
    steps, units = 15, 400
    x, y = gaussian_blobs(100, num_classes=3, dim=12, count=8 * steps, spread=1.0)
    model = hidden_model(12, 3, units=units, active=8, bucket_capacity=128)
    model.compile(SparseAdam(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    layer = model.layers[0]
    start = tf_lsh_ops.row_fingerprints(layer.kernel).numpy()
    recorder = CodesRecorder(layer)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[Fingerprints(), callback, recorder],
    )
    assert [step for step, _ in callback.events] == [3, 6, 9, 12, 15]
    printed = capsys.readouterr().out.splitlines()
    previous = start
    for event, step in enumerate([3, 6, 9, 12, 15]):
        now = fingerprints[step - 1]
        moved = int(np.sum(now != previous))
        assert 0 < moved < units // 2, (step, moved)
        if event == 2:  # the third event
            assert f"step {step}: rehashed every unit ({units} of {units})" in printed[event]
        else:
            assert f"step {step}: rehashed the changed units ({moved} of {units})" in printed[event]
        assert np.array_equal(recorder.codes[step - 1], recorder.fresh_codes[step - 1]), step
        previous = now
    np.testing.assert_array_equal(layer.tables.fingerprints.numpy(), previous)
    counts = layer.tables.counts.numpy().copy()
    tables = bucket_sets(layer.tables.ids.numpy(), counts)
    layer.tables.rebuild()
    assert bucket_sets(layer.tables.ids.numpy(), layer.tables.counts.numpy()) == tables
    np.testing.assert_array_equal(layer.tables.counts.numpy(), counts)


def test_refresh_tables_after_set_weights_and_with_mips():
    layer = LSHDense(300, active=30, num_tables=4, num_hashes=4, seed=5)
    layer.build((None, 16))
    assert int(layer.tables.refresh()) == 0
    kernel = layer.kernel.numpy()
    rows = np.array([3, 70, 299])
    kernel[rows] *= -1.0
    layer.set_weights([kernel if w is layer.kernel else w.numpy() for w in layer.weights])
    assert int(layer.tables.refresh()) == 3
    assert int(layer.tables.refresh()) == 0
    # Most units moved: a full rebuild (the same codes), which re-seeds the tables.
    layer.kernel.assign(layer.kernel * 2.0)
    layer.step.assign(7)
    assert int(layer.tables.refresh()) == 300
    assert int(layer.tables.refresh()) == 0
    np.testing.assert_array_equal(
        layer.tables.codes.numpy(), layer.tables.hash(layer.kernel.value, "data").numpy()
    )

    # The same inside a tf.function (both branches traced): codes follow the weights.
    refresh = tf.function(layer.tables.refresh)
    kernel = layer.kernel.numpy()
    kernel[[0, 1]] = -kernel[[0, 1]]
    layer.kernel.assign(kernel)
    assert int(refresh()) == 2
    assert int(refresh()) == 0
    np.testing.assert_array_equal(
        layer.tables.codes.numpy(), layer.tables.hash(layer.kernel.value, "data").numpy()
    )

    mips = LSHDense(300, active=30, num_tables=4, num_hashes=4, mips=True, seed=5)
    mips.build((None, 16))
    norm = float(mips.tables.max_norm.numpy())
    kernel = mips.kernel.numpy()
    kernel[[1, 2]] *= 0.5  # shorter: the tables' norm still bounds every unit
    mips.kernel.assign(kernel)
    assert int(mips.tables.refresh()) == 2
    assert float(mips.tables.max_norm.numpy()) == norm
    kernel[7] *= 3.0  # longer than the norm the units were hashed with: all are re-hashed
    mips.kernel.assign(kernel)
    assert int(mips.tables.refresh()) == 300
    assert float(mips.tables.max_norm.numpy()) == pytest.approx(
        np.linalg.norm(kernel, axis=1).max()
    )
    np.testing.assert_array_equal(
        mips.tables.codes.numpy(), mips.tables.hash(mips.kernel.value, "data").numpy()
    )


def test_exponential_schedule_periods_grow():
    callback = LSHRebuildCallback(period=1, schedule="exponential", growth=2.0)
    _, history, _ = _callback_fit(callback, steps=16)
    steps = [step for step, _ in callback.events]
    assert steps == [1, 3, 7, 15]
    assert np.diff(steps).tolist() == [2, 4, 8]
    assert history["lsh_rebuilds"] == [4]


@pytest.mark.parametrize(
    "learning_rate, threshold, expected",
    [
        (0.0, 0.01, []),  # weights frozen: no rebuild
        (0.05, 0.01, [4, 8, 12, 16]),  # weights move: a rebuild at every check
        (0.05, 1e9, []),  # they move, but less than the threshold
    ],
)
def test_drift_schedule_rebuilds_only_when_weights_moved(learning_rate, threshold, expected):
    callback = LSHRebuildCallback(period=4, schedule="drift", drift_threshold=threshold)
    model, history, _ = _callback_fit(callback, learning_rate=learning_rate)
    assert [step for step, _ in callback.events] == expected
    assert history["lsh_rebuilds"] == [len(expected)]
    drift = callback.drift()  # relative change since the last rebuild
    if learning_rate == 0.0:
        assert drift == 0.0
    elif threshold > 1:
        assert 0.0 < drift < threshold  # the weights moved, just not enough
    else:
        assert drift == 0.0  # rebuilt after the last step


def test_incremental_rebuild_rehashes_one_slice_per_event():
    units, fraction = 64, 0.25
    callback = LSHRebuildCallback(
        period=1, incremental_fraction=fraction, rebuild_on_train_begin=False
    )
    x, y = gaussian_blobs(110, num_classes=3, dim=12, count=32, spread=1.0)
    # The callback alone keeps the tables (the layer's own refreshes off).
    model = hidden_model(12, 3, units=units, active=8, bucket_capacity=128, refresh_period=None)
    # Frozen weights (learning rate 0), but not the ones the tables hold: permuted rows move
    # units between buckets. (Permuting keeps the set of norms, so a MIPS max norm too.)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    layer = model.layers[0]
    old_codes = layer.tables.codes.numpy().copy()
    old_tables = layer.tables.ids.numpy().copy()
    permutation = np.random.default_rng(111).permutation(units)
    layer.kernel.assign(layer.kernel.numpy()[permutation])
    recorder = CodesRecorder(layer)
    model.fit(
        x,
        np.zeros((32, 3), np.float32),
        batch_size=8,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[callback, recorder],
    )
    assert [step for step, _ in callback.events] == [1, 2, 3, 4]
    new_codes = old_codes[permutation]
    assert np.array_equal(recorder.fresh_codes[0], new_codes)
    assert not np.array_equal(recorder.tables[0], old_tables)  # the first slice moved
    for event in range(1, 5):
        done = int(event * fraction * units)
        codes = recorder.codes[event - 1]
        assert np.array_equal(codes[:done], new_codes[:done]), event
        assert np.array_equal(codes[done:], old_codes[done:]), event
    # After 1 / fraction events, the tables hold the same buckets as a full rebuild.
    tables = layer.tables.ids.numpy().copy()
    counts = layer.tables.counts.numpy().copy()
    layer.tables.rebuild()
    assert np.array_equal(layer.tables.codes.numpy(), new_codes)
    assert np.array_equal(counts, layer.tables.counts.numpy())
    assert np.array_equal(np.sort(tables, axis=-1), np.sort(layer.tables.ids.numpy(), axis=-1))
    for table in range(layer.table_config.num_tables):  # every unit in its bucket
        for unit in range(units):
            assert unit in tables[table, new_codes[unit, table]]


def test_callback_needs_an_lsh_layer():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="no LSHDense"):
        model.fit(np.zeros((4, 4)), np.zeros((4, 2)), verbose=0, callbacks=[LSHRebuildCallback()])


# ---------------------------------------------------------------------------------------------
# 10. Configuration errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(active=200), r"active = 200 must be in \[1, units = 100\]"),
        (dict(active=0), r"active = 0 must be in \[1"),
        (dict(active=-3), r"active = -3 must be in"),
        (dict(input_active="50"), r"input_active must be a float fraction or an int count"),
        (dict(input_active=0), r"input_active = 0 must be in \[1, input_dim"),
        (
            dict(input_active=50, kernel_initializer="orthogonal"),
            r"input_active .* needs a variance-scaling kernel_initializer.*orthogonal",
        ),
        (dict(active=0.0), r"active as a fraction must be in \(0, 1\]"),
        (dict(active=1.5), r"active as a fraction must be in \(0, 1\]"),
        (dict(active="5%"), r"active must be a float fraction or an int count"),
        (dict(candidates=[9]), r"candidates must be a float fraction or an int count"),
        (dict(candidates=200, activation="relu"), r"candidates = 200 must be in \[1"),
        (
            dict(active=5, candidates=3, activation="relu"),
            r"candidates \(3: 3 units\) must be at least active \(5: 5 units\)",
        ),
        (dict(active=5, candidates=20), r"candidates beyond active are for hidden layers"),
        (
            dict(active=5, candidates=20, activation="relu", batch_wide=True),
            r"candidates beyond active are for hidden layers.*batch_wide=True",
        ),
        (dict(num_hashes=31), r"srp with num_hashes=31 needs 31 bits per bucket id; at most 30"),
        (
            dict(hash_family="wta", num_hashes=11),
            r"wta with num_hashes=11 needs 33 bits per bucket id; at most 30",
        ),
        (dict(num_hashes=0), r"num_hashes must be None or an int >= 1"),
        (dict(hash_family="minhash"), r"unknown hash_family 'minhash'"),
        (dict(active_rule="top"), r"unknown active_rule 'top'"),
        (dict(inference="sparse"), r"unknown inference mode 'sparse'"),
        (dict(bucket_capacity=0), r"bucket_capacity must be >= 1"),
        (dict(bucket_capacity=-2), r"bucket_capacity must be >= 1"),
        (dict(num_tables=0), r"num_tables must be an int >= 1"),
        (dict(overflow="lru"), r"unknown overflow 'lru'"),
        (dict(min_count=0), r"min_count must be >= 1"),
        (dict(hash_family="wta", bin_size=6), r"bin_size must be a power of two"),
    ],
)
def test_lsh_dense_rejects_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=r"^LSHDense: " + message):
        LSHDense(100, **kwargs)


def test_lsh_dense_rejects_bad_units():
    with pytest.raises(ValueError, match="units must be a positive int"):
        LSHDense(0)


def test_set_inference_rejects_unknown_mode():
    layer = LSHDense(10, active=2)
    with pytest.raises(ValueError, match="unknown inference mode 'fast'"):
        layer.inference = "fast"
    model = keras.Sequential([keras.Input((4,)), layer])
    with pytest.raises(ValueError, match="unknown inference mode"):
        set_inference(model, "exact")


def test_lsh_classifier_needs_an_lsh_dense_head():
    with pytest.raises(ValueError, match="head must be an LSHDense, got Dense"):
        LSHClassifier(keras.layers.Dense(4), keras.layers.Dense(10))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(period=0), "period must be an int >= 1"),
        (dict(period=2.5), "period must be an int >= 1"),
        (dict(schedule="cosine"), "unknown schedule 'cosine'"),
        (dict(schedule="exponential", growth=0.5), "growth must be >= 1"),
        (dict(incremental_fraction=0.0), r"incremental_fraction must be in \(0, 1\]"),
        (dict(incremental_fraction=1.5), r"incremental_fraction must be in \(0, 1\]"),
        (dict(rehash="some"), "unknown rehash 'some'"),
        (dict(full_rebuild_every=0), "full_rebuild_every must be None or an int >= 1"),
        (dict(rehash="all", incremental_fraction=0.1), "rehash='all' and incremental_fraction"),
    ],
)
def test_rebuild_callback_rejects_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=r"^LSHRebuildCallback: " + message):
        LSHRebuildCallback(**kwargs)


def test_lsh_dense_layers_hand_sparse_activations_to_each_other():
    """sparse_outputs: the hidden layer's activations reach the next LSHDense as (ids, values)."""
    x, y = gaussian_blobs(11, num_classes=4, dim=32, count=1024, spread=1.0)
    tables = {"active_rule": "frequency", "num_tables": 8}
    first = LSHDense(200, activation="relu", active=0.2, sparse_outputs=True, **tables)
    second = LSHDense(100, activation="relu", active=0.2, **tables)
    inputs = keras.Input((32,))
    model = keras.Model(inputs, keras.layers.Dense(4)(second(first(inputs))))
    model.compile(
        SparseAdam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[LSHRebuildCallback(10)])
    assert model.evaluate(x, y, verbose=0)[1] > 0.9  # chance: 0.25

    hidden = first(x[:8], training=True)
    assert isinstance(hidden, tf.SparseTensor)
    np.testing.assert_array_equal(hidden.dense_shape.numpy(), [8, 200])
    assert int(tf.size(hidden.values)) <= 8 * first.num_active
    # The next layer computes the same from the sparse pair as from its dense form.
    ids, values = second.active_outputs(hidden)
    dense_ids, dense_values = second.active_outputs(tf.sparse.to_dense(tf.sparse.reorder(hidden)))
    np.testing.assert_array_equal(ids.numpy(), dense_ids.numpy())
    np.testing.assert_allclose(values.numpy(), dense_values.numpy(), rtol=1e-5, atol=1e-5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(second(first(x[:8], training=True), training=True))
    gradients = tape.gradient(loss, [first.kernel, second.kernel])
    assert all(isinstance(g, tf.IndexedSlices) for g in gradients)
    # Exact inference stays dense, and sparse_outputs survives serialization.
    assert isinstance(first(x[:8]), tf.Tensor)
    assert LSHDense.from_config(first.get_config()).sparse_outputs


def test_rebuild_events_reach_tensorboard(tmp_path):
    callback = LSHRebuildCallback(period=4, log_dir=str(tmp_path))
    _callback_fit(callback, steps=8)
    events = []
    for path in tmp_path.rglob("events.out.tfevents.*"):
        for record in tf.compat.v1.train.summary_iterator(str(path)):
            events += [(record.step, value.tag) for value in record.summary.value]
    assert (4, "lsh_rebuilds") in events and (8, "lsh_rebuilds") in events
    assert (8, "lsh_rebuild_seconds") in events


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
