"""`inference="sketch"`: each example's top units of a random sketch of the layer, computed
exactly. Checked against a NumPy reference of the sketch, against each example's exact top-k
(where a sketch of too low a rank must fail), and through training, saving and export."""

import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lsh_ops
from keras_layers import (
    InferenceSketch,
    LSHClassifier,
    LSHDense,
    SparseAdam,
    export_saved_model,
    set_inference,
)

UNITS, DIM = 3000, 512


def _planted(count, seed=0, units=UNITS, dim=DIM, per_example=2):
    """An output layer's situation: each example is the sum of a few units' weights plus
    noise, so those units' products stand far above the rest's."""
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((units, dim)).astype(np.float32) / np.sqrt(dim)
    bias = rng.normal(-1.0, 0.1, units).astype(np.float32)
    owners = np.stack([rng.choice(units, per_example, replace=False) for _ in range(count)])
    x = kernel[owners].sum(1) + 0.05 * rng.standard_normal((count, dim)).astype(np.float32)
    return kernel, bias, x.astype(np.float32)


def _sketched_layer(kernel, bias, rank, active):
    layer = LSHDense(
        kernel.shape[0], active=active, inference_rank=rank, inference="sketch", seed=3
    )
    layer.build((None, kernel.shape[1]))
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
    layer.inference_sketch.fit()  # the weights were set outside training
    return layer


def _exact_top(kernel, bias, x, k):
    return np.argsort(-(x @ kernel.T + bias), axis=1, kind="stable")[:, :k]


def _recall(exact, ids):
    return np.mean([np.isin(exact[b], ids[b]).mean() for b in range(len(exact))])


def test_selects_the_top_units_of_the_sketch_numpy_reference():
    kernel, bias, x = _planted(16)
    layer = _sketched_layer(kernel, bias, rank=24, active=40)
    projection = layer.inference_sketch.projection.numpy()
    assert projection.shape == (24, DIM)
    # Gaussian entries of variance 1 / rank: the sketch's products are unbiased.
    assert np.var(projection) == pytest.approx(1 / 24, rel=0.05)
    scores = (x @ projection.T) @ (kernel @ projection.T).T + bias
    expected = np.argsort(-scores, axis=1)[:, :40]
    ids = layer.active_ids(tf.constant(x), inference=True).numpy()
    assert ids.shape == (16, 40)
    assert [set(row) for row in ids] == [set(row) for row in expected]


def test_finds_the_exact_top_units_where_a_low_rank_sketch_does_not():
    kernel, bias, x = _planted(64)
    exact = _exact_top(kernel, bias, x, 2)  # each example's two planted units
    wide = _sketched_layer(kernel, bias, rank=64, active=60)
    narrow = _sketched_layer(kernel, bias, rank=2, active=60)
    recall_wide = _recall(exact, wide.active_ids(tf.constant(x), inference=True).numpy())
    recall_narrow = _recall(exact, narrow.active_ids(tf.constant(x), inference=True).numpy())
    assert recall_wide >= 0.95
    assert recall_narrow < 0.2


def test_outputs_are_the_exact_products_of_the_selected_units():
    kernel, bias, x = _planted(8)
    layer = _sketched_layer(kernel, bias, rank=64, active=30)
    outputs = layer(tf.constant(x), training=False).numpy()
    ids = layer.active_ids(tf.constant(x), inference=True).numpy()
    expected = np.zeros_like(outputs)
    for b in range(len(x)):
        expected[b, ids[b]] = x[b] @ kernel[ids[b]].T + bias[ids[b]]
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


def test_a_hidden_layer_in_a_model_predicts_its_selected_units_activations():
    kernel, bias, x = _planted(8)
    layer = LSHDense(UNITS, activation="relu", active=30, inference_rank=64, seed=3)
    model = keras.Sequential([keras.Input((DIM,)), layer])
    layer.kernel.assign(kernel)
    layer.bias.assign(bias + 1.0)  # most planted products positive
    layer.inference_sketch.fit()
    set_inference(model, "sketch")
    outputs = model.predict(x, verbose=0)
    ids = layer.active_ids(tf.constant(x), inference=True).numpy()
    for b in range(len(x)):
        expected = np.zeros(UNITS, np.float32)
        expected[ids[b]] = np.maximum(x[b] @ kernel[ids[b]].T + bias[ids[b]] + 1.0, 0)
        np.testing.assert_allclose(outputs[b], expected, rtol=1e-5, atol=1e-5)
    assert 0 < np.count_nonzero(outputs, axis=1).max() <= 30


def test_sparse_inputs_select_as_dense_ones():
    kernel, bias, x = _planted(8)
    x[np.abs(x) < 0.4] = 0
    layer = _sketched_layer(kernel, bias, rank=32, active=30)
    dense = layer.active_ids(tf.constant(x), inference=True).numpy()
    sparse = layer.active_ids(tf.sparse.from_dense(x), inference=True).numpy()
    assert [set(r) for r in dense] == [set(r) for r in sparse]


def test_training_moves_the_step_and_inference_refits_the_sketch():
    kernel, bias, x = _planted(32)
    layer = _sketched_layer(kernel, bias, rank=16, active=30)
    sketch = layer.inference_sketch
    assert sketch.fitted_step.numpy() == layer.step.numpy() == 0
    optimizer = keras.optimizers.SGD(0.5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant(x), training=True) ** 2)
    weights = layer.trainable_weights
    optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
    assert layer.step.numpy() == 1
    stale = sketch.sketch_units.numpy()

    @tf.function
    def select(inputs):  # the refit is traced into inference, as `predict` runs it
        return layer.active_ids(inputs, inference=True)

    select(tf.constant(x))
    refitted = sketch.sketch_units.numpy()
    expected = layer.kernel.numpy() @ sketch.projection.numpy().T
    assert not np.allclose(stale, expected, atol=1e-4)
    np.testing.assert_allclose(refitted, expected, rtol=1e-4, atol=1e-5)
    assert sketch.fitted_step.numpy() == 1


def _trained_classifier(num_labels=400, rank=32):
    rng = np.random.default_rng(1)
    dim = 32
    prototypes = rng.standard_normal((num_labels, dim)).astype(np.float32)
    labels = rng.integers(0, num_labels, (2048, 1)).astype(np.int32)
    x = prototypes[labels[:, 0]] + 0.3 * rng.standard_normal((2048, dim)).astype(np.float32)
    keras.utils.set_random_seed(0)
    body = keras.Sequential(
        [
            keras.Input((dim,)),
            keras.layers.Dense(256, activation="relu"),
            # As the README model's body: centred features, whose norm is all signal.
            keras.layers.LayerNormalization(center=False, scale=False),
        ]
    )
    head = LSHDense(num_labels, active=40, num_tables=8, inference_rank=rank, seed=5)
    model = LSHClassifier(body, head, top_k=1)
    model.compile(SparseAdam(3e-3))
    model.fit(x, labels, batch_size=64, epochs=4, verbose=0)
    return model, x[:200], labels[:200]


@pytest.fixture(scope="module")
def classifier():
    return _trained_classifier()


def test_predict_top_k_ranks_as_exact_inference_on_a_trained_head(classifier):
    model, x, labels = classifier
    top = {}
    for mode in ("dense", "sketch", "lsh"):
        set_inference(model, mode)
        top[mode] = [t.numpy() for t in model.predict_top_k(x, k=3)]
    set_inference(model, "dense")
    # Fitted at the first sketch prediction after the 4 x 32 training steps the head counted.
    head = model.head
    assert head.inference_sketch.fitted_step.numpy() == head.step.numpy() == 128
    ids, scores = top["sketch"]
    assert np.mean(top["dense"][0][:, 0] == labels[:, 0]) == 1.0
    assert np.mean(ids[:, 0] == top["dense"][0][:, 0]) >= 0.95
    # The tables, built to supply training's candidates, find few of the labels.
    assert np.mean(top["lsh"][0][:, 0] == labels[:, 0]) < 0.5
    # Every returned score is the label's exact logit, in order.
    logits = model.predict(x, verbose=0)
    np.testing.assert_allclose(np.take_along_axis(logits, ids, 1), scores, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_keras_file_round_trip_keeps_the_sketch(classifier, tmp_path):
    model, x, _ = classifier
    set_inference(model, "sketch")
    before = [t.numpy() for t in model.predict_top_k(x, 3)]
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    set_inference(model, "dense")
    assert loaded.head.inference_rank == 32 and loaded.head.inference == "sketch"
    sketch, loaded_sketch = model.head.inference_sketch, loaded.head.inference_sketch
    for a, b in [
        (sketch.projection, loaded_sketch.projection),
        (sketch.sketch_units, loaded_sketch.sketch_units),
        (sketch.fitted_step, loaded_sketch.fitted_step),
    ]:
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    after = [t.numpy() for t in loaded.predict_top_k(x, 3)]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


_SERVE_CHILD = """
import sys
import numpy as np
import tensorflow as tf
import tf_lsh_ops  # noqa: F401
served = tf.saved_model.load(sys.argv[1])
np.save(sys.argv[1] + "/out.npy", served.serve(np.load(sys.argv[1] + "/x.npy")).numpy())
"""


def test_exported_sketch_inference_serves_in_another_process(classifier, tmp_path):
    model, x, _ = classifier
    set_inference(model, "sketch")
    expected = model.predict(x, verbose=0)
    set_inference(model, "dense")
    export_saved_model(model, str(tmp_path), inference="sketch")
    np.save(tmp_path / "x.npy", x)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(tf_lsh_ops.__file__)))
    child = subprocess.run(
        [sys.executable, "-c", _SERVE_CHILD, str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, *sys.path])),
        cwd=tempfile.gettempdir(),  # `python -c` would import the checkout first
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-5)


def test_config_round_trip():
    layer = LSHDense(50, active=5, inference_rank=8, inference="sketch")
    config = layer.get_config()
    assert config["inference_rank"] == 8 and config["inference"] == "sketch"
    clone = LSHDense.from_config(config)
    assert clone.inference_rank == 8 and isinstance(clone.inference_sketch, InferenceSketch)
    assert LSHDense(50).inference_sketch is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"inference": "sketch"}, "inference='sketch' needs a sketch to query.*inference_rank"),
        ({"inference_rank": 0}, "inference_rank must be None or an int >= 1, got 0"),
        ({"inference_rank": 8.0}, "inference_rank must be None or an int >= 1, got 8.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LSHDense(50, **kwargs)


def test_switching_a_layer_without_a_sketch_to_sketch_inference_is_named():
    layer = LSHDense(50, name="head")
    assert "sketch" not in layer.inference_modes
    assert "sketch" in LSHDense(50, inference_rank=4).inference_modes
    with pytest.raises(ValueError, match="'head': inference='sketch'.*inference_rank=None"):
        layer.inference = "sketch"
    assert layer.inference == "dense"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
