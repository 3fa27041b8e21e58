"""Saving the Keras layers: configs, `.keras` files, checkpoint resume and SavedModels.

Contracts under test:
  - `get_config` / `from_config` round-trip `LSHDense`, `SparseInputDense`, `LSHClassifier`,
    `SparseAdam` and `PrecisionAtK` (also through `keras.saving.serialize_keras_object`).
  - `model.save("m.keras")` + `keras.models.load_model` restore every weight, the hash tables
    included, so predictions are identical in both inference modes.
  - Training k steps, checkpointing (model + optimizer), restoring into fresh objects and
    training the rest gives bit-identical weights, optimizer slots and tables to training
    uninterrupted (the data order is fixed; a rebuild event falls on step k, see below).
  - `model.export(path)` serves the in-memory predictions from a SavedModel loaded in another
    process after `import tf_lsh_ops`; `keras_layers.export_saved_model(model, path)` (dense
    inference) loads without the plugin at all.
"""

import os
import subprocess
import sys
import tempfile

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

import keras_layers  # noqa: E402
from keras_layers import (  # noqa: E402
    LSHClassifier,
    LSHDense,
    LSHRebuildCallback,
    PrecisionAtK,
    SparseAdam,
    SparseInputDense,
    set_inference,
)
from tf_lsh_ops._loader import OP_NAMESPACE, op_type  # noqa: E402


def classification_data(seed, count, dim, classes):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, dim)).astype(np.float32)
    y = rng.integers(0, classes, count).astype(np.int32)
    return (centers[y] + rng.standard_normal((count, dim))).astype(np.float32), y


def multilabel_data(seed, count, dim, num_labels, max_labels=2):
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((num_labels, dim)).astype(np.float32)
    labels = np.full((count, max_labels), -1, np.int32)
    x = np.empty((count, dim), np.float32)
    for i in range(count):
        n = rng.integers(1, max_labels + 1)
        labels[i, :n] = rng.choice(num_labels, n, replace=False)
        x[i] = prototypes[labels[i, :n]].sum(0) + 0.3 * rng.standard_normal(dim)
    return x, labels


def hidden_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((12,)),
            LSHDense(
                64, activation="relu", active=8, active_rule="frequency", num_tables=4, seed=2
            ),
            keras.layers.Dense(3),
        ]
    )


def classifier(num_labels=60, **kwargs):
    keras.utils.set_random_seed(0)
    body = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24, activation="relu")])
    head = LSHDense(num_labels, active=10, num_tables=4, seed=5)
    return LSHClassifier(body, head, **kwargs)


def assert_same_variables(a, b, names=True):
    """Same names (unless told not to: optimizer slot names embed layer paths) in the same
    order, and bit-identical values."""
    if names:
        assert [v.name for v in a] == [v.name for v in b]
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype, x.path
        assert np.array_equal(x.numpy(), y.numpy()), x.path


def predictions_in_both_modes(model, x):
    out = {}
    for mode in ("dense", "lsh"):
        set_inference(model, mode)
        out[mode] = model.predict(x, verbose=0)
    set_inference(model, "dense")
    return out


# ---------------------------------------------------------------------------------------------
# 6. Configs and .keras files
# ---------------------------------------------------------------------------------------------


def _round_trip(obj):
    config = obj.get_config()
    clone = type(obj).from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(obj)
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is type(obj)
    assert again.get_config() == config
    return clone


def test_lsh_dense_config_round_trip():
    layer = LSHDense(
        50,
        activation="tanh",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer="l2",
        active=7,
        hash_family="dwta",
        num_hashes=3,
        num_tables=5,
        bin_size=4,
        bucket_capacity=9,
        active_rule="threshold",
        min_count=2,
        fill_random=False,
        overflow="fifo",
        batch_wide=True,
        inference="lsh",
        seed=17,
        name="lsh_out",
    )
    clone = _round_trip(layer)
    assert clone.table_config == layer.table_config
    assert clone.tables.num_hashes == layer.tables.num_hashes
    assert clone.tables.bucket_bits == layer.tables.bucket_bits
    for attribute in (
        "units",
        "num_active",
        "active_rule",
        "selection",
        "batch_wide",
        "inference",
        "seed",
        "use_bias",
        "name",
    ):
        assert getattr(clone, attribute) == getattr(layer, attribute), attribute
    assert clone.activation is keras.activations.tanh
    # A fraction stays a fraction (not the count it resolves to).
    assert _round_trip(LSHDense(40, active=0.25)).active == 0.25
    clone = _round_trip(LSHDense(40, activation="relu", active=4, candidates=0.5))
    assert (clone.candidates, clone.num_candidates, clone.selector.num_active) == (0.5, 20, 20)
    assert _round_trip(LSHDense(40, activation="relu", input_active=0.1)).input_active == 0.1


def test_other_configs_round_trip():
    dense = _round_trip(SparseInputDense(7, activation="relu", use_bias=False, name="bag"))
    assert (dense.units, dense.use_bias, dense.name) == (7, False, "bag")

    optimizer = _round_trip(SparseAdam(0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-6, clipnorm=1.0))
    assert isinstance(optimizer, SparseAdam) and not optimizer.amsgrad
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.8, 0.99, 1e-6)
    assert float(optimizer.learning_rate) == pytest.approx(0.02)
    assert optimizer.clipnorm == 1.0

    metric = _round_trip(PrecisionAtK(3))
    assert (metric.k, metric.name) == (3, "P@3")

    model = _round_trip(classifier(top_k=4, lsh_recall_k=3, name="clf"))
    assert (model.top_k, model.lsh_recall_k, model.name) == (4, 3, "clf")
    assert isinstance(model.head, LSHDense) and model.head.units == 60
    assert model.lsh_recall is not None and model.lsh_recall.k == 3


def test_keras_file_round_trip_of_a_hidden_lsh_model(tmp_path):
    x, y = classification_data(1, 64, 12, 3)
    model = hidden_model()
    model.compile(SparseAdam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, verbose=0, shuffle=False, callbacks=[LSHRebuildCallback(3)])
    before = predictions_in_both_modes(model, x)
    assert not np.allclose(before["dense"], before["lsh"])  # the modes differ
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert_same_variables(model.weights, loaded.weights)
    after = predictions_in_both_modes(loaded, x)
    for mode in ("dense", "lsh"):
        assert np.array_equal(before[mode], after[mode]), mode
    assert_same_variables(model.optimizer.variables, loaded.optimizer.variables, names=False)


def test_keras_file_round_trip_of_an_lsh_classifier(tmp_path):
    x, labels = multilabel_data(2, 128, 16, 60)
    model = classifier(lsh_recall_k=3)
    model.compile(SparseAdam(0.01), metrics=[PrecisionAtK(1)])
    model.fit(x, labels, batch_size=32, epochs=2, verbose=0, shuffle=False)
    model.head.inference = "lsh"  # saved in the config
    before = predictions_in_both_modes(model, x)
    set_inference(model, "lsh")
    top_before = [t.numpy() for t in model.predict_top_k(x, 3)]
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, LSHClassifier) and loaded.head.inference == "lsh"
    assert loaded.lsh_recall_k == 3
    assert_same_variables(model.head.weights, loaded.head.weights)  # tables included
    assert_same_variables(model.weights, loaded.weights)
    top_after = [t.numpy() for t in loaded.predict_top_k(x, 3)]
    for a, b in zip(top_before, top_after, strict=True):
        assert np.array_equal(a, b)
    after = predictions_in_both_modes(loaded, x)
    for mode in ("dense", "lsh"):
        assert np.array_equal(before[mode], after[mode]), mode
    for mode in ("dense", "lsh"):
        set_inference(model, mode)
        set_inference(loaded, mode)
        expected = model.evaluate(x, labels, verbose=0, return_dict=True)
        assert loaded.evaluate(x, labels, verbose=0, return_dict=True) == expected


# ---------------------------------------------------------------------------------------------
# 7. Checkpoint resume
# ---------------------------------------------------------------------------------------------

BATCH, STEPS, RESUME_AT, PERIOD = 16, 8, 4, 2


def _fit_steps(model, x, y, first, last):
    """Trains on batches [first, last) in order, with rebuilds every PERIOD steps.

    A resumed fit rebuilds the tables when it begins; RESUME_AT is a multiple of PERIOD, so
    that rebuild (same weights, same layer step, so same seeds) is the one the uninterrupted
    run makes after step RESUME_AT.
    """
    model.fit(
        x[first * BATCH : last * BATCH],
        y[first * BATCH : last * BATCH],
        batch_size=BATCH,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[LSHRebuildCallback(period=PERIOD)],
    )


def _compiled_hidden_model():
    model = hidden_model()
    optimizer = SparseAdam(0.01)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, optimizer


@pytest.mark.parametrize("build_first", [True, False], ids=["built", "deferred"])
def test_tf_checkpoint_resume_equals_uninterrupted_training(tmp_path, build_first):
    assert RESUME_AT % PERIOD == 0
    x, y = classification_data(3, BATCH * STEPS, 12, 3)
    straight, straight_optimizer = _compiled_hidden_model()
    initial = [w.numpy().copy() for w in straight.weights]
    _fit_steps(straight, x, y, 0, STEPS)

    first, first_optimizer = _compiled_hidden_model()
    _fit_steps(first, x, y, 0, RESUME_AT)
    path = tf.train.Checkpoint(model=first, optimizer=first_optimizer).save(tmp_path / "ckpt")

    resumed, optimizer = _compiled_hidden_model()
    if build_first:  # else the slots are restored when the first step creates them
        optimizer.build(resumed.trainable_variables)
    status = tf.train.Checkpoint(model=resumed, optimizer=optimizer).restore(path)
    if build_first:
        status.assert_existing_objects_matched()
    assert int(optimizer.iterations.numpy()) == RESUME_AT
    layer = resumed.layers[0]
    assert int(layer.step.numpy()) == RESUME_AT
    assert_same_variables(first.weights, resumed.weights)
    _fit_steps(resumed, x, y, RESUME_AT, STEPS)

    assert int(optimizer.iterations.numpy()) == STEPS
    assert_same_variables(straight.weights, resumed.weights)  # weights, tables, step
    assert_same_variables(straight_optimizer.variables, optimizer.variables, names=False)
    # Not trivially equal: training moved the weights and the tables.
    for name in ("kernel", "table_ids"):
        index = [w.name for w in straight.weights].index(name)
        assert not np.array_equal(initial[index], straight.weights[index].numpy()), name


def test_keras_file_resume_of_an_lsh_classifier_equals_uninterrupted_training(tmp_path):
    x, labels = multilabel_data(4, BATCH * STEPS, 16, 60)

    def compiled():
        model = classifier()
        model.compile(SparseAdam(0.01), metrics=[PrecisionAtK(1)])
        return model

    straight = compiled()
    _fit_steps(straight, x, labels, 0, STEPS)
    first = compiled()
    _fit_steps(first, x, labels, 0, RESUME_AT)
    first.save(tmp_path / "m.keras")  # weights, tables and optimizer state
    resumed = keras.models.load_model(tmp_path / "m.keras")
    assert int(resumed.optimizer.iterations.numpy()) == RESUME_AT
    _fit_steps(resumed, x, labels, RESUME_AT, STEPS)
    assert_same_variables(straight.weights, resumed.weights)
    assert_same_variables(straight.optimizer.variables, resumed.optimizer.variables, names=False)


# ---------------------------------------------------------------------------------------------
# 8. SavedModel
# ---------------------------------------------------------------------------------------------

_SERVE_CHILD = """
import sys
import numpy as np
import tensorflow as tf

directory = sys.argv[1]
x = np.load(directory + "/x.npy")
results = {}
# No tf_lsh_ops yet: the plugin-free export must load and serve.
try:
    plugin_free = tf.saved_model.load(directory + "/plugin_free")
    results["plugin_free"] = plugin_free.serve(x).numpy()
except Exception as error:  # reported to the parent
    print("plugin-free export failed to load:", repr(error)[:2000])
import tf_lsh_ops  # noqa: F401
loaded = {}  # kept alive: a SavedModel's functions need its variables
for mode in ("dense", "lsh"):
    loaded[mode] = tf.saved_model.load(directory + "/" + mode)
    results[mode] = loaded[mode].serve(x).numpy()
np.savez(directory + "/served.npz", **results)
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Exports a trained hidden-layer model three ways and serves them in one other process."""
    directory = tmp_path_factory.mktemp("saved_models")
    x, y = classification_data(5, 64, 12, 3)
    model = hidden_model()
    model.compile(SparseAdam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, verbose=0, shuffle=False, callbacks=[LSHRebuildCallback(2)])
    expected = predictions_in_both_modes(model, x)
    for mode in ("dense", "lsh"):
        set_inference(model, mode)
        model.export(str(directory / mode), verbose=False)
    set_inference(model, "dense")
    export = getattr(keras_layers, "export_saved_model", None)
    if export is not None:
        export(model, str(directory / "plugin_free"), inference="dense")
    np.save(directory / "x.npy", x)
    # The child finds the same tf_lsh_ops (installed, or this source tree).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(tf_lsh_ops.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, *sys.path]))
    child = subprocess.run(
        [sys.executable, "-c", _SERVE_CHILD, str(directory)],
        env=env,
        # `python -c` puts the working directory first on sys.path: keep the checkout off it.
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    served = dict(np.load(directory / "served.npz"))
    return expected, served, child.stdout, export is not None


@pytest.mark.parametrize("mode", ["dense", "lsh"])
def test_exported_saved_model_serves_in_memory_predictions(served, mode):
    expected, got, _, _ = served
    assert got[mode].shape == expected[mode].shape
    np.testing.assert_array_equal(got[mode], expected[mode])


def test_dense_export_loads_without_the_plugin(served):
    expected, got, stdout, has_api = served
    if not has_api:
        pytest.xfail("keras_layers has no plugin-free export API (export_saved_model)")
    assert "plugin_free" in got, stdout
    np.testing.assert_array_equal(got["plugin_free"], expected["dense"])


def _saved_op_types(directory):
    """Every op type in a SavedModel's graph and function library."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(directory, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    types = set()
    for graph in saved.meta_graphs:
        types |= {node.op for node in graph.graph_def.node}
        for function in graph.graph_def.library.function:
            types |= {node.op for node in function.node_def}
    return types


def _tf_lsh_op_types(op_types):
    """The tf-lsh ones among `op_types` (all in tf-lsh's op namespace)."""
    return {name for name in op_types if name.startswith(OP_NAMESPACE)}


def test_sparse_input_model_exports_with_standard_ops_only(tmp_path):
    """Sparse inputs train through tf-lsh's op, but the plugin-free export holds none."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((40,), sparse=True)
    hidden = SparseInputDense(8, activation="relu")(inputs)
    model = keras.Model(inputs, LSHDense(30, active=6, num_tables=2, seed=1)(hidden))
    x = tf.sparse.from_dense(np.eye(4, 40, dtype=np.float32))
    layer = model.layers[1]
    traced = tf.function(lambda x, training: layer(x, training=training))
    used = {}
    for training, uses_op in ((True, True), (False, False)):
        graph = traced.get_concrete_function(x, training).graph
        used[training] = {op.type for op in graph.get_operations()}
        # The variable, in place.
        assert (op_type("ResourceSparseInputMatmul") in used[training]) == uses_op, used
    np.testing.assert_allclose(
        layer(x, training=True).numpy(), layer(x, training=False).numpy(), rtol=1e-6
    )
    assert _tf_lsh_op_types(used[True]) == {op_type("ResourceSparseInputMatmul")}
    directory = str(tmp_path / "plugin_free")
    keras_layers.export_saved_model(
        model,
        directory,
        inference="dense",
        input_signature=[keras.KerasTensor((None, 40), "float32", sparse=True)],
    )
    assert not _tf_lsh_op_types(_saved_op_types(directory))
    # The check can fail: an LSH-inference export holds tf-lsh ops.
    keras_layers.export_saved_model(
        model,
        str(tmp_path / "lsh"),
        inference="lsh",
        input_signature=[keras.KerasTensor((None, 40), "float32", sparse=True)],
    )
    assert _tf_lsh_op_types(_saved_op_types(str(tmp_path / "lsh")))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
