"""What keeps a long `LSHClassifier` run from stopping or silently slowing down, and its
predictions sound: a batch whose labels outnumber the batch-wide set, an optimizer that
densifies sparse updates, the evaluation step's single table query, and per-example sets in
LSH inference."""

import sys
import warnings

import keras
import numpy as np
import pytest

import tf_lsh_ops
from keras_layers import LSHClassifier, LSHDense, LSHRebuildCallback, SparseAdam

DIM = 16


def _multi_label_data(examples, labels_per_example, num_labels, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((examples, DIM)).astype(np.float32)
    y = np.stack(
        [rng.choice(num_labels, labels_per_example, replace=False) for _ in range(examples)]
    ).astype(np.int32)
    return x, y


def test_batch_wide_set_grows_to_hold_every_label_of_the_batch():
    layer = LSHDense(200, active=8, batch_wide=True, num_tables=4)
    layer.build((None, DIM))
    x, labels = _multi_label_data(6, 3, 200)
    distinct = np.unique(labels)
    assert distinct.size > 8
    ids = layer.active_ids(x, labels).numpy()
    assert ids.shape == (1, distinct.size)
    np.testing.assert_array_equal(np.sort(ids[0]), distinct)
    # Labels the set can hold come first, then what the tables retrieve.
    few = labels[:2, :2]
    ids = layer.active_ids(x[:2], few).numpy()
    assert ids.shape == (1, 8)
    assert set(ids[0, : np.unique(few).size]) == set(few.ravel())


def test_lsh_inference_of_a_batch_wide_layer_chooses_per_example():
    layer = LSHDense(200, active=8, batch_wide=True, num_tables=4, inference="lsh")
    layer.build((None, DIM))
    x, _ = _multi_label_data(6, 1, 200)
    shared = layer.active_ids(x).numpy()
    own = layer.active_ids(x, inference=True).numpy()
    assert shared.shape == (1, 8) and own.shape == (6, 8)
    assert len({tuple(row) for row in own}) > 1  # the examples' own sets differ
    outputs = layer(x, training=False).numpy()
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    for row in range(6):
        computed = np.flatnonzero(outputs[row])
        assert set(computed) <= set(own[row])
        np.testing.assert_allclose(
            outputs[row, computed],
            x[row] @ kernel[computed].T + bias[computed],
            rtol=1e-5,
            atol=1e-6,  # an output near 0 has no relative precision to speak of
        )


def test_a_batch_with_more_labels_than_the_set_trains():
    x, y = _multi_label_data(64, 5, 300)
    keras.utils.set_random_seed(0)
    model = LSHClassifier(
        keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(8, activation="relu")]),
        LSHDense(300, active=20, batch_wide=True, num_tables=4),
    )
    model.compile(SparseAdam(1e-2))
    # Batches of 16 hold up to 80 distinct labels, four times the set.
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[1] < losses[0]


def _classifier(optimizer, batch_wide=False):
    model = LSHClassifier(
        keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(8)]),
        LSHDense(100, active=10, batch_wide=batch_wide, num_tables=4),
    )
    model.compile(optimizer)
    return model


def _fit_warnings(model, callbacks=()):
    x, y = _multi_label_data(32, 2, 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=list(callbacks))
    return [str(w.message) for w in caught if "dense updates of every row" in str(w.message)]


@pytest.mark.parametrize(
    "optimizer, warns",
    [
        (lambda: keras.optimizers.Adam(1e-3), True),
        (lambda: "rmsprop", True),
        (lambda: keras.optimizers.SGD(0.1, momentum=0.9), True),
        (lambda: keras.optimizers.SGD(0.1), False),
        (lambda: SparseAdam(1e-3), False),
    ],
)
def test_training_warns_once_when_the_optimizer_densifies_sparse_updates(optimizer, warns):
    model = _classifier(optimizer())
    messages = _fit_warnings(model)
    assert len(messages) == (1 if warns else 0)
    if warns:
        assert "LSHClassifier" in messages[0] and "SparseAdam" in messages[0]
        assert _fit_warnings(model) == []  # said once


def test_rebuild_callback_warns_for_a_plain_model():
    model = keras.Sequential(
        [keras.Input((DIM,)), LSHDense(100, active=10, num_tables=4, name="wide")]
    )
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    x = np.ones((8, DIM), np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, np.zeros((8, 100)), epochs=1, verbose=0, callbacks=[LSHRebuildCallback()])
    messages = [str(w.message) for w in caught if "dense updates" in str(w.message)]
    assert len(messages) == 1 and "'wide'" in messages[0]


def test_lsh_evaluation_queries_once_and_takes_the_missed_labels_into_the_loss(monkeypatch):
    x, y = _multi_label_data(12, 3, 100, seed=3)
    model = _classifier(SparseAdam(1e-3))
    model.head.inference = "lsh"
    model.build((None, DIM))
    features = model.body(x).numpy()
    retrieved = model.head.active_ids(features).numpy()
    logits = features @ model.head.kernel.numpy().T + model.head.bias.numpy()
    expected = []
    for row, labels in enumerate(y):
        units = list(dict.fromkeys([*retrieved[row][retrieved[row] >= 0], *labels]))
        log_softmax = logits[row, units] - np.log(np.exp(logits[row, units]).sum())
        expected.append(-np.mean([log_softmax[units.index(label)] for label in labels]))

    calls = []
    query = tf_lsh_ops.query_tables
    monkeypatch.setattr(
        tf_lsh_ops, "query_tables", lambda *a, **k: calls.append(1) or query(*a, **k)
    )
    model.compile(SparseAdam(1e-3), run_eagerly=True)
    loss = model.evaluate(x, y, batch_size=12, verbose=0)
    assert len(calls) == 1
    np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
