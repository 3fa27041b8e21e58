"""Data loaders: MNIST, the Extreme Classification Repository format, the synthetic generator,
and the op that gathers a batch (`tf_lsh_ops.multi_label_batch`)."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

try:
    import tf_lsh_ops
    from keras_layers import datasets
except ImportError:  # running from a checkout without the package installed
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tf_lsh_ops
    from keras_layers import datasets


@pytest.fixture(scope="module")
def tiny():
    return datasets.synthetic_extreme_classification("tiny", seed=3)


def test_synthetic_data_has_the_requested_statistics(tiny):
    train, test = tiny
    assert (len(train), len(test)) == (4_000, 1_000)
    assert train.num_features == 2_000 and train.num_labels == 1_000
    assert 4.0 < np.diff(train.label_offsets).mean() < 6.0  # about 5 labels
    assert 60 < np.diff(train.feature_offsets).mean() < 90  # about 75 features
    counts = np.sort(np.bincount(train.label_ids, minlength=train.num_labels))[::-1]
    assert counts[0] > 20 * max(np.median(counts), 1)  # power law: a few labels dominate
    for data in tiny:
        for i in range(0, len(data), 97):  # labels and features distinct within a row
            labels = data.label_ids[data.label_offsets[i] : data.label_offsets[i + 1]]
            features = data.feature_ids[data.feature_offsets[i] : data.feature_offsets[i + 1]]
            assert len(set(labels)) == len(labels) and len(set(features)) == len(features)
            assert np.all(np.diff(features) > 0)


def test_synthetic_data_is_seeded(tiny):
    again, _ = datasets.synthetic_extreme_classification("tiny", seed=3)
    other, _ = datasets.synthetic_extreme_classification("tiny", seed=4)
    np.testing.assert_array_equal(again.feature_ids, tiny[0].feature_ids)
    np.testing.assert_array_equal(again.label_ids, tiny[0].label_ids)
    assert not np.array_equal(other.label_ids[:100], tiny[0].label_ids[:100])


def test_popular_labels_baseline_is_computed_on_training_counts(tiny):
    train, test = tiny
    top = np.argmax(np.bincount(train.label_ids, minlength=train.num_labels))
    want = np.mean(
        [
            top in test.label_ids[test.label_offsets[i] : test.label_offsets[i + 1]]
            for i in range(len(test))
        ]
    )
    assert test.popular_labels_precision(train, 1) == pytest.approx(want)


def test_format_round_trip_and_rows_without_labels(tiny, tmp_path):
    _, test = tiny
    path = str(tmp_path / "test.txt")
    datasets.write_extreme_classification(test, path)
    back = datasets.read_extreme_classification(path)
    np.testing.assert_array_equal(back.label_offsets, test.label_offsets)
    np.testing.assert_array_equal(back.label_ids, test.label_ids)
    np.testing.assert_array_equal(back.feature_ids, test.feature_ids)
    np.testing.assert_allclose(back.feature_values, test.feature_values, rtol=1e-5)

    with open(path, "w") as f:
        f.write("3 10 4\n1,3 0:0.5 9:1\n 2:1.5\n0 4:2\n")
    data = datasets.read_extreme_classification(path)
    np.testing.assert_array_equal(data.label_offsets, [0, 2, 2, 3])
    np.testing.assert_array_equal(data.feature_ids, [0, 9, 2, 4])
    x, y = next(iter(data.dataset(3)))
    np.testing.assert_array_equal(
        tf.sparse.to_dense(x).numpy()[:, [0, 2, 4, 9]],
        [[0.5, 0, 0, 1], [0, 1.5, 0, 0], [0, 0, 2, 0]],
    )
    np.testing.assert_array_equal(y.numpy(), [[1, 3], [-1, -1], [0, -1]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("2 10 4\n1 0:1\n", "header says 2 examples, found 1"),
        ("1 10 4\n7 0:1\n", "label is outside"),
        ("1 10 4\n1 12:1\n", "feature id is outside"),
        ("1 10\n1 0:1\n", "first line"),
        # A malformed token: the file, the line and the token.
        ("1 10 4\n1 0:x\n", r"bad.txt:2: feature value 'x' is not a number"),
        ("1 10 4\n1 a:1\n", r"bad.txt:2: feature id 'a' is not an integer"),
        ("2 10 4\n1 0:1\n1,b 2:1\n", r"bad.txt:3: label 'b' is not an integer"),
        ("1 10 4\n1 0:1 3\n", r"bad.txt:2: feature '3' is not 'feature_id:value'"),
        ("1 ten 4\n1 0:1\n", r"bad.txt:1: header field 'ten' is not an integer"),
    ],
)
def test_format_errors_are_clear(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        datasets.read_extreme_classification(str(path))


def test_dataset_batches_sparse_features_and_padded_labels(tiny):
    train, _ = tiny
    x, y = next(iter(train.dataset(32)))
    assert isinstance(x, tf.SparseTensor)
    np.testing.assert_array_equal(x.dense_shape.numpy(), [32, train.num_features])
    assert y.dtype == tf.int32 and y.shape == (32, train.max_labels)
    dense = tf.sparse.to_dense(tf.sparse.reorder(x)).numpy()
    for i in range(32):
        lo, hi = train.feature_offsets[i], train.feature_offsets[i + 1]
        np.testing.assert_allclose(dense[i, train.feature_ids[lo:hi]], train.feature_values[lo:hi])
        assert np.count_nonzero(dense[i]) == hi - lo
        labels = train.label_ids[train.label_offsets[i] : train.label_offsets[i + 1]]
        np.testing.assert_array_equal(y[i, : len(labels)], labels)
        assert np.all(y[i, len(labels) :].numpy() == -1)


def test_dataset_features_have_a_static_width(tiny):
    """A model built from the dataset (`fit` without `model.build`) reads the width here; the
    batch size is static when every batch is full."""
    train, _ = tiny
    width, max_labels = train.num_features, train.max_labels
    assert len(train) % 48 != 0  # a last, partial batch
    features, labels = train.dataset(48).element_spec
    assert features.shape.as_list() == [None, width]
    assert labels.shape.as_list() == [None, max_labels]
    features, labels = train.dataset(48, shuffle=True, drop_remainder=True).element_spec
    assert features.shape.as_list() == [48, width]
    assert labels.shape.as_list() == [48, max_labels]


def test_dataset_knows_its_number_of_batches(tiny):
    """Keras' fit takes an extra step each epoch on a dataset of unknown cardinality."""
    train, _ = tiny
    for options, batches in [({}, 84), ({"shuffle": True, "drop_remainder": True}, 83)]:
        data = train.dataset(48, **options)
        assert int(data.cardinality()) == batches == sum(1 for _ in data)


def test_mnist_from_the_package():
    (x_train, y_train), (x_valid, _), (x_test, y_test) = datasets.load_mnist()
    assert x_train.shape == (50_000, 784) and x_valid.shape == (10_000, 784)
    assert x_test.shape == (10_000, 784) and x_train.dtype == np.float32
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert set(np.unique(y_test)) == set(range(10))
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]


def test_mnist_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labels = np.array([7, 2, 1], np.uint8)

    def write(name, array, gz):
        header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(
            ">" + "I" * array.ndim, *array.shape
        )
        opener = gzip.open if gz else open
        with opener(str(tmp_path / (name + (".gz" if gz else ""))), "wb") as f:
            f.write(header + array.tobytes())

    write("train-images-idx3-ubyte", images, gz=True)
    write("train-labels-idx1-ubyte", labels, gz=False)
    write("t10k-images-idx3-ubyte", images[:2], gz=False)
    write("t10k-labels-idx1-ubyte", labels[:2], gz=True)
    (x, y), (xt, yt) = datasets.load_mnist_idx(str(tmp_path))
    np.testing.assert_allclose(x, images.reshape(3, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    assert xt.shape == (2, 784) and yt.tolist() == [7, 2]


def test_shuffled_dataset_is_each_example_once_reshuffled_every_epoch(tiny):
    train, _ = tiny

    def epoch(data):
        examples = []
        for x, y in data:
            dense = tf.sparse.to_dense(tf.sparse.reorder(x)).numpy()
            for row, labels in zip(dense, y.numpy(), strict=True):
                examples.append((tuple(row), tuple(labels)))
        return examples

    in_order = epoch(train.dataset(32))
    shuffled = train.dataset(32, shuffle=True, seed=3)
    first, second = epoch(shuffled), epoch(shuffled)
    assert len(first) == len(train) and sorted(first) == sorted(in_order) == sorted(second)
    assert first != in_order and second != first
    assert epoch(train.dataset(32, shuffle=True, seed=3)) == first  # seeded
    assert len(epoch(train.dataset(32, drop_remainder=True))) == len(train) // 32 * 32


def _csr_arrays(data):
    return (
        data.feature_offsets,
        data.feature_ids,
        data.feature_values,
        data.label_offsets,
        data.label_ids.astype(np.int32),
    )


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_multi_label_batch_gathers_the_rows_asked_for(tiny, graph):
    train, _ = tiny
    rows = np.random.default_rng(4).integers(0, len(train), 50)
    rows[7] = rows[3]  # a repeated example
    want = train.take(rows)
    width = train.max_labels + 2

    def gather(rows):
        return tf_lsh_ops.multi_label_batch(
            *_csr_arrays(train), rows, num_features=train.num_features, max_labels=width
        )

    x, y = (tf.function(gather) if graph else gather)(tf.constant(rows))
    np.testing.assert_array_equal(x.dense_shape.numpy(), [50, train.num_features])
    row_of_entry = np.repeat(np.arange(50), np.diff(want.feature_offsets))
    np.testing.assert_array_equal(x.indices.numpy(), np.stack([row_of_entry, want.feature_ids], 1))
    np.testing.assert_array_equal(x.values.numpy(), want.feature_values)
    assert y.shape == (50, width) and y.dtype == tf.int32
    for i in range(50):
        labels = want.label_ids[want.label_offsets[i] : want.label_offsets[i + 1]]
        np.testing.assert_array_equal(
            y[i].numpy(), np.pad(labels, (0, width - len(labels)), constant_values=-1)
        )


@pytest.mark.parametrize(
    "change, message",
    [
        ("row_outside", r"rows\[1\] = 4000 is outside \[0, 4000\)"),
        ("negative_row", r"rows\[1\] = -1 is outside"),
        ("feature_outside", r"feature_ids\[\d+\] = 9999999 \(example \d+\) is outside"),
        ("splits_past_the_end", r"feature_splits\[\d+\], \[\d+\] = \d+, \d+ is not a range"),
        ("too_many_labels", r"has \d+ labels, more than max_labels = 1"),
        (
            "values_length",
            r"dimension 0 of feature_ids .* must equal dimension 0 of feature_values",
        ),
        (
            "splits_length",
            r"dimension 0 of feature_splits .* must equal dimension 0 of label_splits",
        ),
        ("rows_rank", "rows must have rank 1"),
    ],
)
def test_multi_label_batch_bad_input_is_named(tiny, change, message):
    train, _ = tiny
    splits, ids, values, label_splits, labels = (np.copy(a) for a in _csr_arrays(train))
    rows = np.array([0, 1, 2], np.int64)
    max_labels = train.max_labels
    if change == "row_outside":
        rows[1] = len(train)
    elif change == "negative_row":
        rows[1] = -1
    elif change == "feature_outside":
        ids[splits[2]] = 9_999_999
    elif change == "splits_past_the_end":
        splits[2:] = len(ids) + 5
    elif change == "too_many_labels":
        max_labels = 1
        rows = np.array([np.argmax(np.diff(label_splits))])
    elif change == "values_length":
        values = values[:-1]
    elif change == "splits_length":
        splits = splits[:-1]
    elif change == "rows_rank":
        rows = rows[None]
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"MultiLabelBatch: .*{message}"):
        tf_lsh_ops.multi_label_batch(
            splits,
            ids,
            values,
            label_splits,
            labels,
            rows,
            num_features=train.num_features,
            max_labels=max_labels,
        )


if __name__ == "__main__":
    import sys

    sys.exit(pytest.main([__file__, "-q"]))
