"""Tests of the fused active-set softmax cross-entropy against a pure TensorFlow reference."""

import os
import sys
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

try:
    import tf_lsh_ops  # noqa: E402
except ModuleNotFoundError:  # Not installed: use the source tree this file belongs to.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tf_lsh_ops  # noqa: E402

import keras_layers  # noqa: E402

loss_op = tf_lsh_ops.active_softmax_cross_entropy


def reference_binary_loss(ids, logits, labels):
    """The binary loss composed of TensorFlow ops (what the fused op replaced)."""
    labels = tf.cast(labels, ids.dtype)
    hit = (ids[:, :, None] == labels[:, None, :]) & (labels[:, None, :] >= 0)
    is_label = tf.cast(tf.reduce_any(hit, axis=-1) & (ids >= 0), logits.dtype)
    per_unit = tf.nn.sigmoid_cross_entropy_with_logits(
        tf.broadcast_to(is_label, tf.shape(logits)), logits
    )
    per_unit = tf.where(tf.broadcast_to(ids >= 0, tf.shape(logits)), per_unit, 0.0)
    num_labels = tf.reduce_sum(tf.broadcast_to(is_label, tf.shape(logits)), axis=1)
    has_label = num_labels > 0
    per_example = tf.where(has_label, tf.reduce_sum(per_unit, 1) / tf.maximum(num_labels, 1.0), 0.0)
    return tf.reduce_sum(per_example) / tf.maximum(
        tf.reduce_sum(tf.cast(has_label, tf.float32)), 1.0
    )


def reference_loss(ids, logits, labels):
    """The loss composed of TensorFlow ops (what the fused op replaced)."""
    labels = tf.cast(labels, ids.dtype)
    hit = (ids[:, :, None] == labels[:, None, :]) & (labels[:, None, :] >= 0)
    is_label = tf.cast(tf.reduce_any(hit, axis=-1) & (ids >= 0), logits.dtype)
    logits = tf.where(ids >= 0, logits, tf.fill(tf.shape(logits), logits.dtype.min))
    num_labels = tf.reduce_sum(is_label, axis=1)
    per_example = -tf.reduce_sum(is_label * tf.nn.log_softmax(logits), axis=1)
    has_label = num_labels > 0
    per_example = tf.where(has_label, per_example / tf.maximum(num_labels, 1.0), 0.0)
    return tf.reduce_sum(per_example) / tf.maximum(
        tf.reduce_sum(tf.cast(has_label, logits.dtype)), 1.0
    )


def random_case(seed, batch=7, active=11, num_labels=3, num_units=15):
    rng = np.random.default_rng(seed)
    ids = rng.integers(-1, num_units, (batch, active)).astype(np.int32)
    labels = rng.integers(-1, num_units, (batch, num_labels)).astype(np.int32)
    labels[0, :2] = ids[0, 3]  # a repeated label that is in the set
    labels[1] = -1  # no label at all
    ids[2, :] = -1  # nothing active
    logits = (rng.standard_normal((batch, active)) * 3).astype(np.float32)
    return tf.constant(ids), tf.constant(logits), tf.constant(labels)


@pytest.mark.parametrize("seed", range(5))
def test_loss_and_gradient_match_the_tensorflow_reference(seed):
    ids, logits, labels = random_case(seed)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        got = loss_op(ids, logits, labels)
        want = reference_loss(ids, logits, labels)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        tape.gradient(got, logits), tape.gradient(want, logits), rtol=1e-4, atol=1e-6
    )


def test_gradient_matches_numerical_and_scales_with_upstream():
    ids, logits, labels = random_case(9, batch=3, active=5)
    theoretical, numerical = tf.test.compute_gradient(
        lambda logits: 3.0 * loss_op(ids, logits, labels), [logits], delta=1e-2
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


def test_keras_loss_uses_the_op_in_graphs_and_accepts_int64_labels():
    ids, logits, labels = random_case(3)
    fn = tf.function(keras_layers.active_softmax_cross_entropy)
    np.testing.assert_allclose(
        fn(ids, logits, tf.cast(labels, tf.int64)), reference_loss(ids, logits, labels), rtol=1e-5
    )


def test_all_units_active_equals_the_full_softmax_loss():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.standard_normal((4, 6)), tf.float32)
    labels = tf.constant([[1, -1], [0, 5], [2, 2], [-1, -1]], tf.int32)
    ids = tf.tile(tf.range(6)[None], [4, 1])
    np.testing.assert_allclose(
        loss_op(ids, logits, labels),
        keras_layers.dense_softmax_cross_entropy(logits, labels),
        rtol=1e-5,
    )


def test_no_labels_anywhere_gives_zero_loss_and_gradient():
    ids = tf.constant([[1, 2]], tf.int32)
    logits = tf.constant([[0.5, 1.0]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = loss_op(ids, logits, tf.constant([[7]], tf.int32))
    assert float(loss) == 0.0
    np.testing.assert_array_equal(tape.gradient(loss, logits), [[0.0, 0.0]])


def test_one_active_set_for_the_batch_equals_the_set_repeated():
    ids, logits, labels = random_case(4)
    shared = ids[3:4]  # [1, K]
    tiled = tf.tile(shared, [ids.shape[0], 1])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        got = loss_op(shared, logits, labels)
        want = loss_op(tiled, logits, labels)
    assert float(got) == float(want) and float(want) > 0.0
    np.testing.assert_array_equal(tape.gradient(got, logits), tape.gradient(want, logits))
    # In a graph whose batch size is unknown, [1, K] ids are still accepted.
    spec = [tf.TensorSpec([1, None], tf.int32), tf.TensorSpec([None, None], tf.float32)]
    graph_loss = tf.function(lambda i, x: loss_op(i, x, labels), input_signature=spec)
    assert float(graph_loss(shared, logits)) == float(want)


@pytest.mark.parametrize(
    "ids, logits, labels, message",
    [
        ([[1, 2]], [[0.0, 0.0, 0.0]], [[1]], "dimension 1 of ids"),
        ([[1, 2]], [[0.0, 0.0]], [[1], [2]], "dimension 0 of logits"),
        ([[1, 2], [3, 4]], [[0.0, 0.0]] * 3, [[1]] * 3, "dimension 0 of ids"),
        ([1, 2], [0.0, 0.0], [[1]], "ids must have rank 2"),
    ],
)
@pytest.mark.parametrize(
    "op, name",
    [
        (loss_op, "ActiveSoftmaxCrossEntropy"),
        (tf_lsh_ops.active_binary_cross_entropy, "ActiveBinaryCrossEntropy"),
    ],
)
def test_bad_shapes_name_the_op_and_arguments(op, name, ids, logits, labels, message):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=f"{name}.*{message}"):
        op(ids, logits, labels)
    # The same from inside a traced function, where the shapes are checked as the graph is built.
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=f"{name}.*{message}"):
        tf.function(lambda: op(tf.constant(ids), tf.constant(logits), tf.constant(labels)))()


def test_wrong_dtype_is_named():
    with pytest.raises(tf.errors.InvalidArgumentError, match="ActiveSoftmaxCrossEntropy: logits"):
        loss_op([[1]], tf.constant([[1.0]], tf.float64), [[1]])


decoupled = keras_layers.active_decoupled_softmax_cross_entropy


def numpy_multi_label(ids, logits, labels, example_loss):
    """The mean of `example_loss(scores, positive, negative)` (float64 logits, boolean masks
    of the example's labels in its set and of the set's other units) over the examples with a
    label in their set, 0 if none has one, in NumPy."""
    ids, logits, labels = (np.asarray(t) for t in (ids, logits, labels))
    ids = np.broadcast_to(ids, logits.shape)
    per_example = []
    for row in range(logits.shape[0]):
        valid = ids[row] >= 0
        positive = valid & np.isin(ids[row], labels[row][labels[row] >= 0])
        if positive.any():
            scores = logits[row].astype(np.float64)
            per_example.append(example_loss(scores, positive, valid & ~positive))
    return np.mean(per_example) if per_example else 0.0


def numpy_decoupled(ids, logits, labels):
    """Each example's labels in its set, each against the set's non-labels, in NumPy."""

    def example_loss(scores, positive, negative):
        losses = []
        for logit in scores[positive]:
            pool = np.concatenate([[logit], scores[negative]])
            losses.append(np.log(np.exp(pool - pool.max()).sum()) + pool.max() - logit)
        return np.mean(losses)

    return numpy_multi_label(ids, logits, labels, example_loss)


@pytest.mark.parametrize("seed", range(5))
def test_decoupled_loss_matches_numpy(seed):
    ids, logits, labels = random_case(seed)
    np.testing.assert_allclose(
        decoupled(ids, logits, labels), numpy_decoupled(ids, logits, labels), rtol=1e-5
    )


def test_decoupled_loss_gradient_matches_numerical():
    ids, logits, labels = random_case(11)
    theoretical, numerical = tf.test.compute_gradient(
        lambda x: decoupled(ids, x, labels), [tf.cast(logits, tf.float64)]
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-4)


def test_decoupled_loss_keeps_labels_out_of_each_others_denominator():
    # Two labels with the same large logit: the softmax over the set shares the target between
    # them (its loss cannot go below log 2); the decoupled loss goes to 0.
    ids = tf.constant([[0, 1, 2, 3]])
    logits = tf.constant([[20.0, 20.0, 0.0, 0.0]])
    labels = tf.constant([[0, 1]])
    assert float(decoupled(ids, logits, labels)) < 1e-6
    assert float(loss_op(ids, logits, labels)) == pytest.approx(np.log(2), abs=1e-6)


binary = keras_layers.active_binary_cross_entropy


def numpy_binary(ids, logits, labels):
    """A sigmoid cross-entropy per active unit, summed per example, over its labels in the set."""

    def example_loss(z, positive, negative):
        # -log sigmoid(z) for the labels, -log(1 - sigmoid(z)) for the rest of the set.
        losses = np.logaddexp(0, -z[positive]).sum() + np.logaddexp(0, z[negative]).sum()
        return losses / positive.sum()

    return numpy_multi_label(ids, logits, labels, example_loss)


@pytest.mark.parametrize("seed", range(5))
def test_binary_loss_matches_numpy(seed):
    ids, logits, labels = random_case(seed)
    np.testing.assert_allclose(
        binary(ids, logits, labels), numpy_binary(ids, logits, labels), rtol=1e-5
    )


def test_binary_loss_gradient_matches_numerical():
    ids, logits, labels = random_case(12)
    theoretical, numerical = tf.test.compute_gradient(
        lambda x: binary(ids, x, labels), [logits], delta=1e-2
    )
    assert np.abs(theoretical[0]).max() > 0.01
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-3)


@pytest.mark.parametrize("seed", range(3))
def test_fused_binary_loss_matches_the_loss_in_tensorflow_ops(seed):
    # The op against the loss composed of TensorFlow ops (what the fused op replaced), with
    # the gradient of each, per-example sets and one shared set.
    ids, logits, labels = random_case(seed, batch=6, active=40, num_units=30)
    for set_ids in (ids, ids[:1]):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(logits)
            got = binary(set_ids, logits, labels)
            want = reference_binary_loss(set_ids, logits, labels)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        np.testing.assert_allclose(
            tape.gradient(got, logits), tape.gradient(want, logits), rtol=1e-4, atol=1e-7
        )


def test_binary_loss_scores_each_unit_on_its_own():
    # Two labels both far above every negative: near 0, as for the decoupled loss (the softmax
    # over the set cannot go below log 2); a negative's logit alone moves it.
    ids = tf.constant([[0, 1, 2, 3]])
    labels = tf.constant([[0, 1]])
    assert float(binary(ids, tf.constant([[20.0, 20.0, -20.0, -20.0]]), labels)) < 1e-6
    raised = float(binary(ids, tf.constant([[20.0, 20.0, 0.0, -20.0]]), labels))
    assert raised == pytest.approx(np.log(2) / 2, rel=1e-5)


MULTI_LABEL_LOSSES = {
    "decoupled_softmax": (decoupled, keras_layers.dense_decoupled_softmax_cross_entropy),
    "binary": (binary, keras_layers.dense_binary_cross_entropy),
}
NUMPY_LOSSES = {"decoupled_softmax": numpy_decoupled, "binary": numpy_binary}


@pytest.mark.parametrize("name", MULTI_LABEL_LOSSES)
def test_loss_of_one_set_for_the_batch_equals_the_set_repeated(name):
    active, _ = MULTI_LABEL_LOSSES[name]
    ids, logits, labels = random_case(3, batch=5)
    shared = ids[:1]
    np.testing.assert_allclose(
        active(shared, logits, labels),
        active(tf.tile(shared, [5, 1]), logits, labels),
        rtol=1e-6,
    )


@pytest.mark.parametrize("name", MULTI_LABEL_LOSSES)
def test_dense_loss_equals_the_loss_with_every_unit_active(name):
    active, dense = MULTI_LABEL_LOSSES[name]
    rng = np.random.default_rng(5)
    logits = tf.constant(rng.standard_normal((6, 15)) * 3, tf.float32)
    labels = tf.constant(rng.integers(-1, 15, (6, 3)), tf.int32)
    every_unit = tf.range(15)[None, :]
    np.testing.assert_allclose(dense(logits, labels), active(every_unit, logits, labels), rtol=1e-6)
    np.testing.assert_allclose(
        dense(logits, labels),
        NUMPY_LOSSES[name](np.arange(15)[None, :], logits, labels),
        rtol=1e-5,
    )


@pytest.mark.parametrize("name", MULTI_LABEL_LOSSES)
@pytest.mark.parametrize(
    "ids, logits, labels, message",
    [
        ([[1, 2]], [[0.0, 0.0, 0.0]], [[1]], "ids and logits must have as many columns"),
        ([[1, 2]], [[0.0, 0.0]], [[1], [2]], "labels and logits must have as many rows"),
        ([[1, 2], [3, 4]], [[0.0, 0.0]] * 3, [[1]] * 3, "ids must have 1 row or as many"),
        ([1, 2], [0.0, 0.0], [[1]], "ids must have rank 2"),
        ([[1, 2]], [[0.0, 0.0]], [1], "labels must have rank 2"),
    ],
)
def test_multi_label_losses_name_bad_shapes(name, ids, logits, labels, message):
    active, dense = MULTI_LABEL_LOSSES[name]
    if active is not binary:  # the binary loss's op names its errors itself (above)
        with pytest.raises(
            (tf.errors.InvalidArgumentError, ValueError), match=f"{active.__name__}: {message}"
        ):
            active(tf.constant(ids), tf.constant(logits), tf.constant(labels))
    if message.startswith("labels"):
        with pytest.raises(
            (tf.errors.InvalidArgumentError, ValueError), match=f"{dense.__name__}: {message}"
        ):
            dense(tf.constant(logits), tf.constant(labels))


@pytest.mark.parametrize("name", MULTI_LABEL_LOSSES)
def test_multi_label_losses_without_labels_are_zero(name):
    active, _ = MULTI_LABEL_LOSSES[name]
    ids = tf.constant([[0, 1], [2, -1]])
    logits = tf.constant([[1.0, 2.0], [3.0, 0.0]])
    assert float(active(ids, logits, tf.constant([[-1], [-1]]))) == 0.0


def test_decoupled_loss_without_negatives_is_zero():
    ids = tf.constant([[0, 1], [2, -1]])
    logits = tf.constant([[1.0, 2.0], [3.0, 0.0]])
    # Every active unit a label: nothing to push against.
    assert float(decoupled(ids, logits, tf.constant([[0, 1], [2, -1]]))) == pytest.approx(0.0)


@pytest.mark.parametrize("name", MULTI_LABEL_LOSSES)
def test_classifier_trains_with_a_multi_label_loss_and_keeps_it_in_its_config(name):
    import keras

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.integers(0, 40, (64, 3)).astype(np.int32)
    keras.utils.set_random_seed(0)
    model = keras_layers.LSHClassifier(
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(8)]),
        keras_layers.LSHDense(
            40, active=10, num_tables=4, bias_initializer=keras.initializers.Constant(-3.0)
        ),
        active_loss=name,
    )
    model.compile(keras_layers.SparseAdam(1e-2))
    losses = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history["loss"]
    assert losses[-1] < losses[0]
    assert model.get_config()["active_loss"] == name
    with pytest.raises(ValueError, match="LSHClassifier: unknown active_loss 'bce'"):
        keras_layers.LSHClassifier(model.body, keras_layers.LSHDense(40), active_loss="bce")


def test_binary_loss_with_zero_head_biases_warns():
    import keras

    body = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8)])
    with pytest.warns(UserWarning, match="active_loss='binary' with the head 'out' biases"):
        keras_layers.LSHClassifier(
            body, keras_layers.LSHDense(40, name="out"), active_loss="binary"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low = keras.initializers.Constant(-8.0)
        head = keras_layers.LSHDense(40, bias_initializer=low)
        keras_layers.LSHClassifier(body, head, active_loss="binary")
        keras_layers.LSHClassifier(body, keras_layers.LSHDense(40), active_loss="softmax")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
