"""A new user's first fit, as the README shows it: `LSHClassifier` with a `SparseInputDense` body
on `MultiLabelData.dataset`, with no `model.build` first, and with a fixed batch size.

Each of these once failed: the dataset's SparseTensor had no static width, so
`SparseInputDense.build` raised a `TypeError` about `int(None)`; a static batch dimension made
`PrecisionAtK.update_state` infer an unknown rank and fail in `fit`; the dataset's unknown
cardinality made Keras take an extra step each epoch and count a last full batch twice.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

try:
    import tf_lsh_ops  # noqa: F401
except ModuleNotFoundError:  # Not installed: use the source tree this file belongs to.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tf_lsh_ops  # noqa: F401

import keras  # noqa: E402

import keras_layers  # noqa: E402
from keras_layers import datasets  # noqa: E402

NUM_FEATURES, NUM_LABELS = 300, 200


@pytest.fixture(scope="module")
def data():
    # 250 training examples: batches of 32 leave a partial last batch.
    return datasets.synthetic_extreme_classification(
        (NUM_FEATURES, NUM_LABELS, 250, 50), labels_per_example=2.0, seed=5
    )


def readme_model():
    keras.utils.set_random_seed(0)
    model = keras_layers.LSHClassifier(
        body=keras_layers.SparseInputDense(16, activation="relu"),
        head=keras_layers.LSHDense(NUM_LABELS, active=100, num_tables=4, batch_wide=True, seed=1),
    )
    model.compile(
        optimizer=keras_layers.SparseAdam(1e-2),
        metrics=[keras_layers.PrecisionAtK(1), keras_layers.PrecisionAtK(5)],
    )
    return model


@pytest.mark.parametrize(
    "options", [{}, {"shuffle": True, "drop_remainder": True}], ids=["partial", "static_batch"]
)
def test_fit_on_a_multi_label_dataset_without_build(data, options):
    train, test = data
    model = readme_model()
    history = model.fit(train.dataset(32, **options), epochs=2, verbose=0)
    assert model.body.kernel.shape == (NUM_FEATURES, 16)
    batches = 7 if options else 8  # 250 examples: 7 full batches of 32 and one of 26
    assert int(model.optimizer.iterations) == 2 * batches
    for name in ("P@1", "P@5", "loss"):
        assert len(history.history[name]) == 2 and np.isfinite(history.history[name]).all()
    # The metric agrees with P@1 computed from the model's own top ids (same batches: unshuffled).
    drop_remainder = options.get("drop_remainder", False)
    results = model.evaluate(
        test.dataset(32, drop_remainder=drop_remainder), verbose=0, return_dict=True
    )
    hits = []
    for x, y in test.dataset(32, drop_remainder=drop_remainder):
        ids, _ = model.predict_top_k(x, k=1)
        hits.extend((ids.numpy()[:, :1] == y.numpy()).any(axis=1))
    np.testing.assert_allclose(results["P@1"], np.mean(hits), rtol=1e-6)


def test_precision_at_k_with_a_static_batch_and_dynamic_predictions():
    """Labels [4, 3] from a fixed-size batch, top ids [None, 2] from a dynamic gather."""
    metric = keras_layers.PrecisionAtK(2)

    @tf.function(
        input_signature=[
            tf.TensorSpec([4, 3], tf.int32),
            tf.TensorSpec([None, 2], tf.int32),
        ]
    )
    def update(y_true, y_pred):
        metric.update_state(y_true, y_pred)

    labels = np.array([[3, 5, -1], [1, -1, -1], [0, 2, 4], [7, -1, -1]], np.int32)
    top = np.array([[5, 1], [1, 3], [4, 2], [-1, 6]], np.int32)
    update(labels, top)
    expected = np.mean([0.5, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)


def test_unknown_input_width_is_a_clear_error():
    with pytest.raises(ValueError, match=r"SparseInputDense 'body'.*number of input features"):
        keras_layers.SparseInputDense(4, name="body").build((None, None))

    # A pipeline of the user's own whose features have no static width: fit says what to do.
    def examples():
        yield tf.SparseTensor([[0, 3]], [1.0], [1, 10]), np.array([[2]], np.int32)

    dataset = tf.data.Dataset.from_generator(
        examples,
        output_signature=(
            tf.SparseTensorSpec([None, None], tf.float32),
            tf.TensorSpec([None, 1], tf.int32),
        ),
    )
    model = keras_layers.LSHClassifier(
        body=keras_layers.SparseInputDense(4), head=keras_layers.LSHDense(10, active=5)
    )
    model.compile(optimizer=keras_layers.SparseAdam(1e-3))
    with pytest.raises(ValueError, match=r"set_shape\(\[None, num_features\]\).*model\.build"):
        model.fit(dataset, verbose=0)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
