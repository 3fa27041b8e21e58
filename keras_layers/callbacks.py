"""`LSHRebuildCallback`: keeps the hash tables of every `LSHDense` in step with its weights."""

import importlib.util
import math
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_layers.lsh_dense import lsh_layers
from keras_layers.optimizers import warn_if_dense_updates

SCHEDULES = ("fixed", "exponential", "drift")
REHASH = ("changed", "all")


class LSHRebuildCallback(keras.callbacks.Callback):
    """Keeps the hash tables of every `LSHDense` in step with its weights during `fit`.

    Schedules:
      - `"fixed"`: every `period` steps.
      - `"exponential"`: the first rebuild after `period` steps, then each period `growth`
        times the last (SLIDE's exponentially decaying rebuild rate: weights move less as
        training converges).
      - `"drift"`: every `period` steps, rebuild only if the weights moved: the relative
        change of a fixed sample of `sample_rows` rows since the last rebuild exceeds
        `drift_threshold` (as Mongoose; cheap, and the same decision on every worker since it
        reads synchronised weights).

    At each event, `rehash="changed"` (the default) re-hashes only the units whose weights
    changed since they were last hashed (`HashTables.refresh`: the same codes as a full
    rebuild, found by comparing fingerprints of the weights; on the Amazon-670K shape 3%-7% of
    the output layer, so an event costs about a third of a full rebuild), and every
    `full_rebuild_every`-th event rebuilds: a refresh keeps which units a full bucket holds,
    a rebuild draws them again (with refreshes only, P@1 after an epoch on the Amazon shape
    was 0.3%-1% lower than with rebuilds at every event, over three seeds; with this, equal or
    higher). `rehash="all"` rebuilds the tables from scratch at every event
    (`HashTables.rebuild`). With `incremental_fraction` (e.g. 0.1), each event instead
    rehashes the next slice of that fraction of units (round-robin) with
    `HashTables.update`, changed or not.

    Each event adds `lsh_rebuilds` (the running count) and `lsh_rebuild_seconds` to the logs
    (the progress bar and `History` show them), and, with `log_dir`, writes both as
    TensorBoard scalars.

    Args:
      period: steps between rebuilds (or between drift checks).
      schedule: one of `SCHEDULES`.
      growth: period factor after each rebuild, for `"exponential"`.
      drift_threshold: relative weight change that triggers a rebuild, for `"drift"`.
      sample_rows: rows sampled per layer for the drift fingerprint.
      rehash: `"changed"` or `"all"` (above).
      full_rebuild_every: with `rehash="changed"`, every this many scheduled events (the 3rd,
        6th, ...) is a full rebuild; None: never.
      incremental_fraction: None, or the fraction of units each event rehashes, round-robin
        (instead of `rehash`).
      rebuild_on_train_begin: rebuild once when training starts, e.g. after loading weights
        from elsewhere. Off by default: the tables are saved and restored with the model, and
        the schedule follows the optimizer's step count, so a run resumed from a checkpoint
        rebuilds exactly when an uninterrupted one would.
      log_dir: optional TensorBoard log directory.
      verbose: 1 prints a line per rebuild.

    Example:

    >>> model.fit(x, y, callbacks=[LSHRebuildCallback(period=50)])  # doctest: +SKIP
    """

    def __init__(
        self,
        period=50,
        schedule="fixed",
        growth=1.5,
        drift_threshold=0.01,
        sample_rows=1024,
        rehash="changed",
        full_rebuild_every=3,
        incremental_fraction=None,
        rebuild_on_train_begin=False,
        log_dir=None,
        verbose=0,
    ):
        super().__init__()
        if not isinstance(period, int) or period < 1:
            raise ValueError(f"LSHRebuildCallback: period must be an int >= 1, got {period!r}")
        if schedule not in SCHEDULES:
            raise ValueError(
                f"LSHRebuildCallback: unknown schedule {schedule!r}; expected one of {SCHEDULES}"
            )
        if growth < 1:
            raise ValueError(f"LSHRebuildCallback: growth must be >= 1, got {growth}")
        if rehash not in REHASH:
            raise ValueError(
                f"LSHRebuildCallback: unknown rehash {rehash!r}; expected one of {REHASH}"
            )
        if full_rebuild_every is not None and (
            not isinstance(full_rebuild_every, int) or full_rebuild_every < 1
        ):
            raise ValueError(
                "LSHRebuildCallback: full_rebuild_every must be None or an int >= 1, got "
                f"{full_rebuild_every!r}"
            )
        if incremental_fraction is not None and rehash == "all":
            raise ValueError(
                "LSHRebuildCallback: rehash='all' and incremental_fraction both say which units "
                "to rehash; pass one"
            )
        if incremental_fraction is not None and not 0 < incremental_fraction <= 1:
            raise ValueError(
                "LSHRebuildCallback: incremental_fraction must be in (0, 1], got "
                f"{incremental_fraction}"
            )
        if log_dir is not None and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("LSHRebuildCallback: log_dir needs the package tensorboard")
        self.period = period
        self.schedule = schedule
        self.growth = growth
        self.drift_threshold = drift_threshold
        self.sample_rows = sample_rows
        self.rehash = rehash
        self.full_rebuild_every = full_rebuild_every
        self.incremental_fraction = incremental_fraction
        self.rebuild_on_train_begin = rebuild_on_train_begin
        self.log_dir = log_dir
        self.verbose = verbose
        self.rebuilds = 0
        self.events = []  # (step, seconds) of each rebuild
        self.rehashed_units = []  # units each rebuild re-hashed, summed over the layers
        self._writer = None

    def on_train_begin(self, logs=None):
        layers = lsh_layers(self.model)
        if not layers:
            raise ValueError("LSHRebuildCallback: the model has no LSHDense layer")
        # Layers that select without tables ("low_rank", "exact") keep themselves up to date.
        self._layers = [layer for layer in layers if layer.tables is not None]
        if not self._layers:
            warnings.warn(
                "LSHRebuildCallback: no LSHDense layer of this model uses hash tables (their "
                "active_rule: "
                + ", ".join(sorted({layer.selection for layer in layers}))
                + "); they refresh themselves every refresh_period steps, and the callback "
                "does nothing",
                stacklevel=2,
            )
        warn_if_dense_updates(self.model.optimizer, self._layers, "LSHRebuildCallback")
        self._snapshots = {}
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        if self.rebuild_on_train_begin:
            self._rebuild(self._global_step(), "all")
        elif self.schedule == "drift":
            for layer in self._layers:
                if layer.built:  # drift is measured from here
                    self._take_snapshot(layer)

    def _global_step(self):
        """Steps trained so far: the optimizer's counter, which checkpoints restore (`.numpy()`:
        under tf.distribute it is a MirroredVariable, which int() refuses)."""
        return int(self.model.optimizer.iterations.numpy())

    def event_index(self, step):
        """How many scheduled events fall in steps 1..`step`, and whether `step` is one.

        A function of the step alone, so a resumed run keeps the schedule of an uninterrupted
        one.
        """
        if self.schedule != "exponential":
            return step // self.period, step > 0 and step % self.period == 0
        count, at, gap = 0, self.period, float(self.period)
        while at < step:
            count += 1
            gap *= self.growth
            at += max(1, round(gap))
        return count + (at == step), at == step

    def on_train_batch_end(self, batch, logs=None):
        step = self._global_step()
        index, is_event = self.event_index(step)
        if not is_event:
            return
        if self.schedule == "drift" and self.drift() <= self.drift_threshold:
            return
        how = "slice" if self.incremental_fraction is not None else self.rehash
        if how == "changed" and self.full_rebuild_every and index % self.full_rebuild_every == 0:
            how = "all"  # `index` counts the events so far: the same on a resumed run
        seconds = self._rebuild(step, how, index=index)
        if logs is not None:
            logs["lsh_rebuilds"] = self.rebuilds
            logs["lsh_rebuild_seconds"] = seconds

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lsh_rebuilds"] = self.rebuilds

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def drift(self):
        """Largest relative change, over the layers, of the sampled rows since the last rebuild.

        Under tf.distribute every worker returns the chief's value, so all decide alike even
        if two hosts round the norms differently.
        """
        return self._chief_value(self._local_drift())

    def _chief_value(self, value):
        strategy = self.model.distribute_strategy
        if strategy.num_replicas_in_sync == 1:
            return value

        def chief_value(context):
            first = context.replica_id_in_sync_group == 0
            return tf.constant(value if first else 0.0, tf.float64)

        per_replica = strategy.experimental_distribute_values_from_function(chief_value)
        return float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))

    def _local_drift(self):
        worst = 0.0
        for layer in self._layers:
            if id(layer) not in self._snapshots:
                self._take_snapshot(layer)  # built after train begin: first check sets the base
                continue
            rows, before = self._snapshots[id(layer)]
            now = tf.gather(layer.kernel.value, rows).numpy()
            change = np.linalg.norm(now - before) / max(np.linalg.norm(before), 1e-12)
            worst = max(worst, float(change))
        return worst

    def _take_snapshot(self, layer):
        rng = np.random.default_rng(layer.seed)
        count = min(self.sample_rows, layer.units)
        rows = np.sort(rng.choice(layer.units, count, replace=False)).astype(np.int32)
        self._snapshots[id(layer)] = (rows, tf.gather(layer.kernel.value, rows).numpy())

    def _rebuild(self, step, how, index=1):
        """One event: `how` is "all", "changed" or "slice" (event `index`'s round-robin slice)."""
        start = time.perf_counter()
        rehashed = units = 0
        for layer in self._layers:
            if not layer.built:  # its first tables come with its weights
                continue
            if self.schedule == "drift":
                self._take_snapshot(layer)
            units += layer.units
            if how == "all":
                layer.tables.rebuild()
                rehashed += layer.units
            elif how == "changed":
                rehashed += int(layer.tables.refresh())
            else:
                # Event `index` (1-based) rehashes the index-th slice, round-robin.
                count = max(1, math.ceil(self.incremental_fraction * layer.units))
                begin = (index - 1) * count
                ids = np.unique((np.arange(begin, begin + count) % layer.units).astype(np.int32))
                layer.tables.update(ids)
                rehashed += ids.size
        seconds = time.perf_counter() - start
        self.rebuilds += 1
        self.events.append((step, seconds))
        self.rehashed_units.append(rehashed)
        if self._writer is not None:
            with self._writer.as_default():
                tf.summary.scalar("lsh_rebuilds", self.rebuilds, step=step)
                tf.summary.scalar("lsh_rebuild_seconds", seconds, step=step)
        if self.verbose:
            what = {"all": "every unit", "changed": "the changed units", "slice": "a slice"}[how]
            print(
                f"LSHRebuildCallback: step {step}: rehashed {what} ({rehashed:,} of {units:,}) "
                f"in {seconds:.2f} s"
            )
        return seconds
