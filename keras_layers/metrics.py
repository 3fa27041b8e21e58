"""Metrics for many-label outputs: precision at k and the recall of LSH active sets."""

import keras
import tensorflow as tf

# What a metric can report before its first update (e.g. a training-only metric in `evaluate`).
NAN = float("nan")


@keras.saving.register_keras_serializable(package="tf_lsh")
class PrecisionAtK(keras.metrics.Mean):
    """P@k for multi-label outputs: the fraction of the top k predictions that are labels.

    `update_state(y_true, y_pred)`: `y_true` int `[batch, max_labels]`, -1 padded (or `[batch]`
    for one label each); `y_pred` either int top ids `[batch, >= k]` (best first) or float
    scores `[batch, units]`.

    Example:

    >>> m = PrecisionAtK(2)
    >>> m.update_state([[3, 5, -1]], [[5, 1, 3]])
    >>> float(m.result())
    0.5
    """

    def __init__(self, k=1, name=None, dtype=None):
        super().__init__(name=name or f"P@{k}", dtype=dtype)
        self.k = k

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.convert_to_tensor(y_true)
        y_pred = tf.convert_to_tensor(y_pred)
        if y_true.shape.rank == 1:
            y_true = y_true[:, None]
        if y_pred.dtype.is_floating:
            y_pred = tf.math.top_k(y_pred, self.k).indices
        top = tf.cast(y_pred[:, : self.k], tf.int64)
        labels = tf.cast(y_true, tf.int64)
        # tf.equal, not `==`: with one batch dimension static and the other not (a dataset with
        # a fixed batch size, top ids from a dynamic gather), `==` infers an unknown rank.
        hit = (
            tf.equal(top[:, :, None], labels[:, None, :])
            & (labels[:, None, :] >= 0)
            & (top[:, :, None] >= 0)
        )
        hits = tf.reduce_sum(tf.cast(tf.reduce_any(hit, axis=-1), self.dtype), axis=1)
        return super().update_state(hits / self.k, sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


@keras.saving.register_keras_serializable(package="tf_lsh")
class LSHRecall(keras.metrics.Mean):
    """The fraction of the exact top-k units that the LSH active set contained.

    `update_state(exact_top_ids, active_ids)`: int `[batch, k]` ids of the largest exact
    outputs, and the active set `[batch, active]` (or `[1, active]` batch-wide; -1 padded).
    `LSHClassifier(..., lsh_recall_k=k)` tracks it during `evaluate`, `LSHDense(...,
    track_selection=True)` in training. `when_empty` is its result before any update (0.0, or
    `NAN` for a metric measured in training only, so that `evaluate` does not report a 0).
    """

    def __init__(self, k=5, name=None, dtype=None, when_empty=0.0):
        super().__init__(name=name or f"lsh_recall@{k}", dtype=dtype)
        self.k = k
        self.when_empty = when_empty

    def result(self):
        empty = tf.equal(tf.convert_to_tensor(self.count), 0)
        return tf.where(empty, tf.constant(self.when_empty, self.dtype), super().result())

    def update_state(self, exact_top_ids, active_ids, sample_weight=None):
        exact = tf.cast(exact_top_ids, tf.int64)[:, : self.k]
        active = tf.cast(active_ids, tf.int64)
        active = tf.broadcast_to(active, [tf.shape(exact)[0], tf.shape(active)[1]])
        # Sorted search: O(k log active) per example instead of k x active comparisons.
        active = tf.sort(active, axis=1)
        positions = tf.searchsorted(active, tf.sort(exact, axis=1))
        found = tf.gather(active, tf.minimum(positions, tf.shape(active)[1] - 1), batch_dims=1)
        recall = tf.reduce_mean(
            tf.cast(tf.equal(found, tf.sort(exact, axis=1)), self.dtype), axis=1
        )
        return super().update_state(recall, sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "k": self.k, "when_empty": self.when_empty}


@keras.saving.register_keras_serializable(package="tf_lsh")
class UnitCoverage(keras.metrics.Metric):
    """The fraction of a layer's units selected at least once since the last reset.

    `update_state(active_ids)`: int `[batch, active]` (or `[1, active]`) unit ids, -1 padded.
    `LSHDense` tracks one (`<name>_coverage`): a unit that is never selected never learns.

    Example:

    >>> m = UnitCoverage(4)
    >>> m.update_state([[0, 2, -1]])
    >>> float(m.result())
    0.5
    """

    def __init__(self, units, name=None, dtype=None):
        super().__init__(name=name or "unit_coverage", dtype=dtype)
        self.units = units
        self.selected = self.add_variable(
            shape=(units,), initializer="zeros", dtype="float32", name="selected"
        )
        self.updates = self.add_variable(shape=(), initializer="zeros", name="updates")

    def update_state(self, active_ids, sample_weight=None):
        ids = tf.reshape(tf.cast(active_ids, tf.int32), [-1])
        ids = tf.boolean_mask(ids, ids >= 0)
        # Marks rather than counts: a scatter of ones is idempotent, so repeats cost nothing.
        self.selected.value.scatter_update(tf.IndexedSlices(tf.ones_like(ids, tf.float32), ids))
        self.updates.assign_add(1.0)

    def result(self):
        # NaN before any update: measured in training, it has nothing to say in `evaluate`.
        covered = tf.reduce_mean(tf.convert_to_tensor(self.selected))
        return tf.where(tf.equal(tf.convert_to_tensor(self.updates), 0), NAN, covered)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
