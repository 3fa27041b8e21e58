"""How `LSHDense` selects its active units: the low-rank sketch, exact top-k, the recall and
coverage metrics, and the layer keeping itself up to date without a callback."""

import os
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_layers import (
    ExactSelector,
    HashTables,
    LowRankSelector,
    LSHDense,
    LSHRebuildCallback,
    SparseAdam,
    UnitCoverage,
    inference_mode,
)


def _inputs(batch, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, dim)).astype(np.float32)


def _exact_top(layer, x):
    """Each row's `num_active` largest pre-activations, as sets (NumPy reference)."""
    pre = x @ layer.kernel.numpy().T + layer.bias.numpy()
    return [set(row) for row in np.argsort(-pre, axis=1)[:, : layer.num_active]]


def _as_sets(ids):
    return [set(row[row >= 0]) for row in np.asarray(ids)]


def _built(units, dim, **kwargs):
    kwargs.setdefault("track_selection", True)
    layer = LSHDense(units, activation="relu", **kwargs)
    layer.build((None, dim))
    layer.bias.assign(np.random.default_rng(9).normal(0, 0.1, units).astype(np.float32))
    return layer


def test_auto_rule_is_low_rank_for_hidden_layers_and_tables_for_linear_ones():
    assert LSHDense(100, activation="relu").selection == "low_rank"
    assert LSHDense(100, activation="relu").inference == "lsh"
    assert LSHDense(100).selection == "frequency"
    assert LSHDense(100).inference == "dense"
    assert LSHDense(100, activation="relu", batch_wide=True).selection == "frequency"
    assert LSHDense(100, activation="relu", active_rule="union").selection == "union"


def test_exact_rule_selects_the_exact_top_k():
    layer = _built(200, 24, active=10, active_rule="exact")
    x = _inputs(16, 24)
    assert _as_sets(layer.active_ids(x)) == _exact_top(layer, x)


def test_full_rank_sketch_selects_the_exact_top_k():
    # With rank >= input_dim, fitted to inputs spanning the input space, the sketch is exact.
    layer = _built(200, 12, active=10, rank=12)
    layer.selector.fit(_inputs(64, 12, seed=1))
    x = _inputs(32, 12, seed=2)
    assert _as_sets(layer.active_ids(x)) == _exact_top(layer, x)


def test_sketch_is_the_top_singular_subspace_of_the_products():
    layer = _built(300, 40, active=15, rank=6)
    x = _inputs(50, 40, seed=3)
    layer.selector.fit(x)
    products = x @ layer.kernel.numpy().T  # [n, units]
    left = np.linalg.svd(products.T, full_matrices=False)[0][:, :6]
    basis = layer.selector.sketch_units.numpy()
    np.testing.assert_allclose(basis.T @ basis, np.eye(6), atol=1e-4)
    np.testing.assert_allclose(basis @ basis.T, left @ left.T, atol=2e-3)
    np.testing.assert_allclose(
        layer.selector.sketch_inputs.numpy(), basis.T @ layer.kernel.numpy(), rtol=1e-4, atol=1e-4
    )


def test_sketch_recovers_inputs_of_low_rank_structure():
    # Inputs in a 5-dimensional subspace of 64 dimensions: a rank-5 sketch ranks exactly.
    rng = np.random.default_rng(4)
    subspace = rng.standard_normal((5, 64)).astype(np.float32)
    layer = _built(500, 64, active=25, rank=5)
    layer.selector.fit(rng.standard_normal((40, 5)).astype(np.float32) @ subspace)
    x = rng.standard_normal((20, 5)).astype(np.float32) @ subspace
    assert _as_sets(layer.active_ids(x)) == _exact_top(layer, x)


def test_sketch_with_fewer_inputs_than_its_rank_pads_with_zero_columns():
    layer = _built(100, 30, active=5, rank=16)
    layer.selector.fit(_inputs(4, 30))
    basis = layer.selector.sketch_units.numpy()
    assert np.all(np.isfinite(basis))
    assert np.count_nonzero(np.linalg.norm(basis, axis=0) > 1e-6) == 4


def test_sparse_inputs_select_as_dense_ones():
    layer = _built(150, 20, active=8, rank=10)
    x = _inputs(12, 20) * (np.random.default_rng(5).random((12, 20)) < 0.3)
    sparse = tf.sparse.from_dense(x)
    layer.selector.fit(sparse)
    dense_ids = layer.active_ids(x).numpy()
    assert _as_sets(layer.active_ids(sparse)) == _as_sets(dense_ids)
    exact = LSHDense(150, activation="relu", active=8, active_rule="exact")
    exact.build((None, 20))
    assert _as_sets(exact.active_ids(sparse)) == _as_sets(exact.active_ids(x))


def test_low_rank_selection_is_one_fused_op_with_top_k_order():
    # Small integers: the sketch scores are exact, so the fused op and tf.math.top_k over
    # sketch_products agree id for id, ties (many here) to the lower id.
    layer = _built(300, 6, active=20, rank=4)
    selector, rng = layer.selector, np.random.default_rng(6)
    selector.sketch_units.assign(rng.integers(-2, 3, (300, 4)).astype(np.float32))
    selector.sketch_inputs.assign(rng.integers(-2, 3, (4, 6)).astype(np.float32))
    layer.bias.assign(rng.integers(-2, 3, 300).astype(np.float32))
    x = tf.constant(rng.integers(-2, 3, (9, 6)).astype(np.float32))
    want = tf.math.top_k(selector.sketch_products(x) + layer.bias, 20).indices
    np.testing.assert_array_equal(layer.active_ids(x), want)
    ops = {
        op.type
        for op in tf.function(layer.active_ids).get_concrete_function(x).graph.get_operations()
    }
    assert "TfLsh>MatmulTopK" in ops and "TopKV2" not in ops, ops
    # With labels, the scores are formed (the labels go first), as before.
    labels = tf.constant([[299, -1]] * 9, tf.int32)
    ops = {
        op.type
        for op in tf.function(layer.active_ids)
        .get_concrete_function(x, labels)
        .graph.get_operations()
    }
    assert "TopKV2" in ops and "TfLsh>MatmulTopK" not in ops, ops
    np.testing.assert_array_equal(layer.active_ids(x, labels)[:, 0], [299] * 9)


@pytest.mark.parametrize("rule", ["low_rank", "exact"])
def test_labels_are_selected_first(rule):
    layer = _built(100, 8, active=6, active_rule=rule)
    labels = np.array([[97, 3, -1], [-1, -1, -1], [5, 6, 7]], np.int32)
    ids = layer.active_ids(_inputs(3, 8), labels=labels).numpy()
    assert set(ids[0, :2]) == {97, 3}
    assert set(ids[2, :3]) == {5, 6, 7}
    assert all(len(set(row)) == 6 for row in ids)


def test_training_outputs_match_k_winners_of_dense_on_the_same_weights():
    layer = _built(120, 16, active=12, active_rule="exact")
    dense = keras.layers.Dense(120, activation="relu")
    dense.build((None, 16))
    dense.set_weights([layer.kernel.numpy().T, layer.bias.numpy()])
    x = _inputs(10, 16)
    reference = dense(x).numpy()
    threshold = np.sort(x @ layer.kernel.numpy().T + layer.bias.numpy(), axis=1)[:, -12][:, None]
    pre = x @ layer.kernel.numpy().T + layer.bias.numpy()
    k_winners = np.where(pre >= threshold, reference, 0.0)
    np.testing.assert_allclose(layer(x, training=True).numpy(), k_winners, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(x, training=False).numpy(), k_winners, rtol=1e-5, atol=1e-5)
    with inference_mode(keras.Sequential([layer]), "dense"):
        np.testing.assert_allclose(layer(x).numpy(), reference, rtol=1e-5, atol=1e-5)
    with inference_mode(keras.Sequential([layer]), "top_k"):
        np.testing.assert_allclose(layer(x).numpy(), k_winners, rtol=1e-5, atol=1e-5)


def test_training_gradients_match_k_winners_of_dense():
    layer = _built(60, 10, active=6, active_rule="exact")
    kernel = tf.Variable(layer.kernel.numpy())
    x = tf.constant(_inputs(7, 10))
    weights = tf.constant(np.random.default_rng(6).standard_normal((7, 60)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True) * weights)
    grad = tf.convert_to_tensor(tape.gradient(loss, layer.kernel))
    with tf.GradientTape() as tape:
        pre = tf.matmul(x, kernel, transpose_b=True) + layer.bias
        top = tf.math.top_k(pre, 6).values[:, -1:]
        loss = tf.reduce_sum(tf.where(pre >= top, tf.nn.relu(pre), 0.0) * weights)
    np.testing.assert_allclose(grad, tape.gradient(loss, kernel), rtol=1e-5, atol=1e-5)


def test_recall_metric_is_measured_against_exact_top_k():
    layer = _built(300, 16, active=15, active_rule="frequency", num_tables=4, refresh_period=5)
    x = _inputs(32, 16)
    selected = _as_sets(layer.active_ids(x))  # step 0: the selection the refresh measures
    expected = np.mean(
        [len(s & e) / 15 for s, e in zip(selected, _exact_top(layer, x), strict=True)]
    )
    layer(x, training=True)
    assert float(layer.recall.result()) == pytest.approx(expected, abs=1e-6)
    assert expected < 0.9  # tables of 4 hashes miss some: the test can tell
    for _ in range(4):
        layer(x, training=True)  # steps 1-4: no refresh
    assert float(layer.recall.count) == 32  # one value an example
    layer(x, training=True)  # step 5
    assert float(layer.recall.count) == 64


def test_coverage_counts_units_selected_at_least_once():
    metric = UnitCoverage(10)
    metric.update_state([[0, 2, -1], [2, 9, 3]])
    assert float(metric.result()) == pytest.approx(0.4)
    metric.update_state([[1, 3]])
    assert float(metric.result()) == pytest.approx(0.5)
    metric.reset_state()
    assert np.isnan(float(metric.result()))  # nothing measured (e.g. in evaluate)
    layer = _built(50, 8, active=5)
    ids = layer.active_ids(_inputs(6, 8)).numpy()  # the sketch stays: refit from its own products
    layer(_inputs(6, 8), training=True)
    assert float(layer.coverage.result()) == pytest.approx(len(np.unique(ids)) / 50, abs=0.2)
    assert float(layer.coverage.result()) > 0


def _clusters(count, dim=32, classes=8, seed=0):
    centres = np.random.default_rng(100).standard_normal((classes, dim)) * 2
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, count)
    x = np.maximum(centres[y] + rng.standard_normal((count, dim)), 0)  # non-negative, as pixels
    return x.astype(np.float32), y


def _default_model(dim=32, classes=8):
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((dim,)),
            LSHDense(400, "relu", sparse_outputs=True, track_selection=True, name="hidden1"),
            LSHDense(400, "relu", track_selection=True, name="hidden2"),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )


def test_default_layers_learn_without_a_callback():
    x, y = _clusters(4096)
    model = _default_model()
    model.compile(SparseAdam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=64, epochs=3, verbose=0).history
    x_test, y_test = _clusters(1000, seed=1)
    results = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert results["accuracy"] > 0.9  # chance: 0.125
    assert np.isnan(results["hidden1_recall"])  # measured in training only
    for name in ("hidden1", "hidden2"):
        assert 0.5 < history[f"{name}_recall"][-1] <= 1.0
        assert 0 < history[f"{name}_coverage"][-1] <= 1.0


def test_table_layers_refresh_their_tables_without_a_callback():
    layer = _built(100, 8, active=10, active_rule="frequency", num_tables=4, refresh_period=3)
    before = layer.tables.fingerprints.numpy().copy()
    layer.kernel.assign(layer.kernel * 2.0)
    x = _inputs(8, 8)
    layer(x, training=True)  # step 0 refreshes
    assert not np.any(layer.tables.fingerprints.numpy() == before)
    layer.kernel.assign(layer.kernel * 2.0)
    moved = layer.tables.fingerprints.numpy().copy()
    layer(x, training=True)  # step 1: not due
    np.testing.assert_array_equal(layer.tables.fingerprints.numpy(), moved)


def test_refresh_in_a_traced_step_refits_the_sketch():
    layer = _built(80, 8, active=8, refresh_period=2)
    x = tf.constant(_inputs(16, 8))

    @tf.function
    def step():
        return layer(x, training=True)

    first = layer.selector.sketch_inputs.numpy().copy()
    layer.kernel.assign(layer.kernel * 3.0)
    step()  # step 0: refit to the new kernel
    refit = layer.selector.sketch_inputs.numpy().copy()
    assert not np.allclose(first, refit)
    layer.kernel.assign(layer.kernel * 3.0)
    step()  # step 1: not due
    np.testing.assert_array_equal(layer.selector.sketch_inputs.numpy(), refit)
    step()  # step 2
    assert not np.allclose(layer.selector.sketch_inputs.numpy(), refit)


def test_config_round_trip_and_saving_keep_the_sketch(tmp_path):
    layer = LSHDense(64, activation="relu", active=8, rank=7, refresh_period=9, name="h")
    config = layer.get_config()
    assert (config["active_rule"], config["rank"], config["refresh_period"]) == ("auto", 7, 9)
    assert LSHDense.from_config(config).get_config() == config
    model = keras.Sequential([keras.Input((12,)), layer, keras.layers.Dense(3)])
    model.compile(SparseAdam(1e-2), "mse")
    x = _inputs(40, 12)
    model.fit(x, np.zeros((40, 3), np.float32), batch_size=8, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        loaded.layers[0].selector.sketch_units.numpy(), layer.selector.sketch_units.numpy()
    )
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"active_rule": "best"}, "unknown active_rule 'best'"),
        ({"active_rule": "low_rank", "batch_wide": True}, "batch_wide=True needs a hash-table"),
        ({"active_rule": "exact", "batch_wide": True}, "not 'exact'"),
        ({"rank": 0}, "rank must be an int >= 1, got 0"),
        ({"rank": 2.5}, "rank must be an int >= 1, got 2.5"),
        ({"refresh_period": 0}, "refresh_period must be None, 'auto' or an int >= 1, got 0"),
        ({"track_selection": True, "refresh_period": None}, "refresh_period must be set"),
        ({"inference": "top"}, "unknown inference mode 'top'"),
        ({"boost_strength": -1.0}, "boost_strength must be >= 0.*got -1.0"),
        ({"boost_strength": "high"}, "boost_strength must be a number, got 'high'"),
        ({"boost_strength": 1.0, "active_rule": "union"}, "only with the 'low_rank' rule"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=f"LSHDense: .*{message}"):
        LSHDense(100, activation="relu", **kwargs)


@pytest.mark.parametrize(
    "kwargs, selector",
    [
        (dict(activation="relu"), LowRankSelector),
        (dict(activation="relu", active_rule="exact"), ExactSelector),
        (dict(activation="relu", active_rule="union"), HashTables),
        (dict(), HashTables),
    ],
)
def test_the_selector_is_the_rule_in_force(kwargs, selector):
    layer = LSHDense(50, active=4, **kwargs)
    assert type(layer.selector) is selector
    assert layer.selection == layer.selector.rule
    # Only a table rule has tables to rebuild.
    assert (layer.tables is layer.selector) == (selector is HashTables)


def _boosted(units=400, dim=24, active=10, strength=2.0):
    layer = _built(units, dim, active=active, boost_strength=strength, track_selection=False)
    duty = np.random.default_rng(4).uniform(0, 0.1, units).astype(np.float32)
    layer.selector.duty_cycle.assign(duty)
    return layer, duty


def test_selection_is_the_top_k_of_the_boosted_sketch_in_training_and_inference():
    layer, duty = _boosted()
    x = _inputs(16, 24)
    selector = layer.selector
    plain = (x @ selector.sketch_inputs.numpy().T) @ selector.sketch_units.numpy().T
    plain += layer.bias.numpy()
    boost = np.exp(2.0 * (10 / 400 - duty))
    np.testing.assert_allclose(selector.boost_factors().numpy(), boost, rtol=1e-6)
    expected = [set(row) for row in np.argsort(-plain * boost, axis=1)[:, :10]]
    assert _as_sets(layer.active_ids(tf.constant(x))) == expected
    assert _as_sets(layer.active_ids(tf.constant(x), inference=True)) == expected
    assert expected != [set(row) for row in np.argsort(-plain, axis=1)[:, :10]]


def test_boosting_passes_over_the_units_that_won_every_step():
    layer, _ = _boosted(strength=4.0)
    x = _inputs(64, 24)
    layer.selector.duty_cycle.assign(np.full(400, 10 / 400, np.float32))  # every unit on target
    usual = np.unique(layer.active_ids(tf.constant(x)).numpy())
    duty = np.zeros(400, np.float32)
    duty[usual] = 1.0  # as if these had won every example
    layer.selector.duty_cycle.assign(duty)
    boosted = np.unique(layer.active_ids(tf.constant(x)).numpy())
    assert len(np.intersect1d(boosted, usual)) < len(usual) / 2
    layer.selector.duty_cycle.assign(np.zeros(400, np.float32))  # none won: no change in order
    assert np.array_equal(np.unique(layer.active_ids(tf.constant(x)).numpy()), usual)


def test_duty_cycle_averages_each_units_share_of_the_examples():
    layer, duty = _boosted()
    ids = np.array([[3, 5, -1], [3, 7, 9]], np.int32)
    layer.selector.observe(tf.constant(ids))
    share = np.zeros(400, np.float32)
    share[[3, 5, 7, 9]] = [1.0, 0.5, 0.5, 0.5]
    rate = 2 / layer.selector.BOOST_PERIOD  # an average over the last ~1,000 examples
    np.testing.assert_allclose(
        layer.selector.duty_cycle.numpy(), (1 - rate) * duty + rate * share, rtol=1e-6
    )


def test_a_training_call_updates_the_duty_cycle_with_its_selection():
    layer = _built(300, 24, active=12, boost_strength=1.0, track_selection=False)
    assert np.allclose(layer.selector.duty_cycle.numpy(), 12 / 300)  # starts at the target
    x = tf.constant(_inputs(8, 24))
    ids = layer.active_ids(x).numpy()  # the step's selection, before the call records it
    layer(x, training=True)
    counts = np.bincount(ids.ravel(), minlength=300) / 8
    rate = 8 / layer.selector.BOOST_PERIOD
    expected = (1 - rate) * 12 / 300 + rate * counts
    np.testing.assert_allclose(layer.selector.duty_cycle.numpy(), expected, rtol=1e-5)
    layer(x, training=False)  # inference records nothing
    np.testing.assert_allclose(layer.selector.duty_cycle.numpy(), expected, rtol=1e-5)


def test_boost_strength_round_trips_and_defaults_to_off():
    layer = LSHDense(50, activation="relu", boost_strength=1.5)
    assert LSHDense.from_config(layer.get_config()).boost_strength == 1.5
    plain = _built(50, 8)
    assert plain.boost_strength == 0.0 and not hasattr(plain.selector, "duty_cycle")


def test_rebuild_callback_warns_when_no_layer_has_tables():
    x, y = _clusters(128)
    model = _default_model()
    model.compile(SparseAdam(1e-3), "sparse_categorical_crossentropy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LSHRebuildCallback(period=2)])
    assert any("no LSHDense layer of this model uses hash tables" in str(w.message) for w in caught)


def test_selection_is_not_tracked_unless_asked():
    layer = LSHDense(50, activation="relu")
    assert layer.recall is None and layer.coverage is None
    model = keras.Sequential([keras.Input((8,)), layer, keras.layers.Dense(2)])
    model.compile(SparseAdam(1e-3), "mse")
    x = _inputs(16, 8)
    history = model.fit(x, np.zeros((16, 2)), epochs=1, verbose=0).history
    assert set(history) == {"loss"}
    loss = model.evaluate(x, np.zeros((16, 2)), verbose=0)  # a scalar, as for any model
    assert np.isfinite(loss)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize("selector", [ExactSelector, HashTables, LowRankSelector])
@pytest.mark.parametrize("method", ["select", "observe", "refresh"])
def test_selector_methods_convert_with_autograph(selector, method):
    # A custom training step (as `LSHClassifier`'s) calls `record_training_step` inside its
    # `tf.function`, and AutoGraph converts the selector's methods from there; one it cannot
    # convert (a body that is only a docstring) runs behind a warning asking to report a bug.
    tf.autograph.to_graph(getattr(selector, method))
