"""Distributed training of tf-lsh models with `tf.distribute` through `model.fit`.

`LSHClassifier` trains under `tf.distribute.MirroredStrategy` (one host, several devices)
and `tf.distribute.MultiWorkerMirroredStrategy` (a `TF_CONFIG` cluster, collective
all-reduce): build and compile it under `strategy.scope()`, then call `model.fit(dataset)`.

Keras 3's TensorFlow trainer does not run `fit` under `MultiWorkerMirroredStrategy`, even for
a plain `Embedding` + `Dense` model (measured with TensorFlow 2.21.0 and Keras 3.15.1, two
workers on localhost):

1. `_maybe_symbolic_build` (keras/src/backend/tensorflow/trainer.py) hands the whole nested
   batch of `PerReplica` values to `strategy.reduce`: "Attempt to convert a value
   (PerReplica:...) with an unsupported type ... to a Tensor".
2. With that step bypassed, `reduce_per_replica` reduces every scalar log (the loss, each
   metric) with `strategy.reduce("MEAN", value, axis=0)`: "Invalid reduction dimension 0 for
   input with 0 dimensions".

A third one hits `LSHClassifier` under any strategy (`MirroredStrategy` included): Keras'
symbolic build, which only runs under a strategy, builds the model inside a scratch graph and a
stateless scope, where `LSHDense.build` computes its hash parameters in that graph and the
variable they initialise is created later, outside it: "... TfLsh>LshSrpProjections:0 ... is out of
scope and cannot be used here". Nor could the first hash tables be made eagerly there.

`DistributedFitMixin`, a base of `LSHClassifier`, fixes these in the model class only,
leaving Keras and other models alone:

- `_maybe_symbolic_build` builds the model eagerly under the strategy's scope from the first
  replica's share of the first batch (so every `LSHDense` makes its tables once, eagerly,
  from the broadcast initial weights), then lets Keras build the compiled metrics and the
  optimizer from that same local batch.
- `_make_function` gives Keras a step function whose scalar logs are reshaped to `[1]`,
  so that Keras' own cross-worker `MEAN` along axis 0 is well defined (the mean over the
  replicas, a scalar again). Only under `MultiWorkerMirroredStrategy` in multi-worker mode:
  elsewhere the step function is Keras' own.

Both rely on Keras internals (reached through keras_layers/_keras_compat.py), so they check
the Keras version they were written and tested for (`SUPPORTED_KERAS`) and raise
`UnsupportedKerasVersionError` outside it, rather than train silently wrong. Models created
outside a strategy never reach the check.

`LSHClassifier.train_step` also divides the loss by the number of replicas before taking the
gradients (`scale_loss`), as Keras' own `train_step` does: the all-reduce sums the replicas'
gradients, so the update is that of the mean loss over the global batch.

The rest of the module: `BackupAndRestore`, a chief-written, atomically replaced backup for
multi-worker fault tolerance; `tf_config`, a worker's `TF_CONFIG`; and
`gradient_exchange_bytes`, the bytes a step's gradient exchange sends, sparse and dense. (Tests
and benchmarks run clusters on localhost with tests/cluster_util.py.)

See docs/distributed.md.
"""

import json
import os

import keras
import tensorflow as tf

from keras_layers import _keras_compat
from keras_layers._keras_compat import (
    SUPPORTED_KERAS,
    UnsupportedKerasVersionError,
    check_keras_version,
)


def is_multi_worker(strategy):
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` spanning several workers."""
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    return multi_worker and _keras_compat.in_multi_worker_mode(strategy)


def is_chief(strategy=None):
    """Whether this process is the chief of its cluster (True without a cluster).

    The chief is the task of type "chief", or worker 0 of a cluster without one.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not is_multi_worker(strategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return (task_type in (None, "worker")) and not has_chief and (task_id or 0) == 0


def _first_local(value):
    """The first local replica's component of a distributed value, else the value."""
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


class DistributedFitMixin(_keras_compat.TrainerHooks):
    """Makes `fit`/`evaluate` of a `keras.Model` subclass work under `tf.distribute`.

    Put it first among the bases: `class MyModel(DistributedFitMixin, keras.Model)`. See the
    module docstring for what it changes and why.
    """

    def build_for_fit(self, iterator=None, data_batch=None):
        strategy = _keras_compat.creation_strategy(self)
        if strategy is None:  # not created under a strategy: Keras builds while tracing
            return super().build_for_fit(iterator=iterator, data_batch=data_batch)
        check_keras_version()
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = next(it)
                break
        data_batch = tf.nest.map_structure(_first_local, data_batch, expand_composites=False)
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data_batch)
        with strategy.scope():
            if not self.built:
                # Eagerly, outside Keras' stateless scratch graph: every LSHDense makes its
                # first tables here, once, from the (broadcast) initial weights.
                self.build(tuple(x.shape))
            self.build_metrics_and_optimizer(data_batch)

    def wrap_step_function(self, step_function):
        strategy = self.distribute_strategy
        if not is_multi_worker(strategy):
            if _keras_compat.creation_strategy(self) is not None:
                check_keras_version()
            return super().wrap_step_function(step_function)
        check_keras_version()

        def step_with_rank_one_logs(data):
            logs = step_function(data)
            return tf.nest.map_structure(
                lambda t: tf.reshape(t, [1]) if tf.is_tensor(t) and t.shape.rank == 0 else t,
                logs,
            )

        return super().wrap_step_function(step_with_rank_one_logs)


def scale_loss(loss):
    """`loss / replicas`: per-replica losses whose gradients, all-reduced by summation, give
    the gradient of the mean over the global batch (Keras' `scale_loss_for_distribution`)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


# ----------------------------------------------------------------------------- fault tolerance


class BackupAndRestore(_keras_compat.BackupAndRestoreHooks):
    """`keras.callbacks.BackupAndRestore` for multi-worker clusters.

    Keras' callback has every worker write the same files in `backup_dir` (racing each other
    on shared storage) and can leave a weights file and a metadata file from different epochs
    when killed between the two writes. This one:

    - writes only on the chief (`is_chief`); every worker reads the backup at the start of
      `fit` (so `backup_dir` must be on storage every worker sees);
    - writes `ckpt-<epoch>.weights.h5` to a temporary name, renames it, then atomically
      replaces `training_metadata.json`, which names the weights file: a kill at any moment
      leaves a consistent pair;
    - backs up at the end of each epoch only (`save_freq="epoch"`): Keras 3.15's restore
      resumes at an epoch boundary, so a mid-epoch backup would replay part of an epoch.

    The weights file holds the model's weights and non-trainable state (the `LSHDense` hash
    tables, their `step` counters) and the optimizer's variables (its iteration count and
    slots), so a resumed run continues exactly where the backup was taken.
    """

    def __init__(self, backup_dir, delete_checkpoint=True, keep=2):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=delete_checkpoint)
        self.keep = keep

    def _metadata(self):
        if not os.path.exists(self.metadata_path):
            return None
        with open(self.metadata_path) as f:
            return json.load(f)

    def restore_backup(self):
        if not self.model.built:
            raise ValueError("BackupAndRestore: build the model before fit")
        metadata = self._metadata()
        if metadata is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, metadata["weights"]))
        _keras_compat.set_initial_epoch(self.model, metadata["epoch"])

    def on_train_begin(self, logs=None):
        self.restore_backup()

    def write_backup(self):
        if not is_chief(self.model.distribute_strategy):
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"ckpt-{self.current_epoch}.weights.h5"
        temporary = os.path.join(self.backup_dir, f".{name}.tmp.weights.h5")
        self.model.save_weights(temporary, overwrite=True)
        os.replace(temporary, os.path.join(self.backup_dir, name))
        metadata = {"epoch": self.current_epoch, "batch": 0, "weights": name}
        temporary = self.metadata_path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(metadata, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.metadata_path)
        for old in os.listdir(self.backup_dir):
            if old.startswith("ckpt-") and old.endswith(".weights.h5"):
                epoch = int(old[len("ckpt-") : -len(".weights.h5")])
                if epoch <= self.current_epoch - self.keep:
                    os.remove(os.path.join(self.backup_dir, old))

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and is_chief(self.model.distribute_strategy):
            super().on_train_end(logs)


# ----------------------------------------------------------------------------- table rebuilds


# ---------------------------------------------------------------------- communication volume


def gradient_exchange_bytes(rows, num_workers, input_dim, dense_rows, index_bytes=8):
    """Bytes one worker sends per step for one `[dense_rows, input_dim]` float32 variable.

    Args:
      rows: the rows of the sparse gradient of each worker (a list, one per worker).
      num_workers: W.
      input_dim: D, floats per row (1 for a bias).
      dense_rows: N, the variable's rows.
      index_bytes: bytes per index: 4 for int32 (`LSHDense`), 8 for int64 (embedding lookups,
        `SparseInputDense`).

    Returns:
      `(sparse, dense)`: TensorFlow's collective all-reduce of an `IndexedSlices` all-gathers
      every worker's lengths, then its values and indices padded to the longest
      (`(W - 1) * max(rows) * (4 D + index_bytes)` bytes sent per worker, ring all-gather);
      a dense ring all-reduce sends `2 (W - 1) / W * N * 4 D`.
    """
    longest = max(rows)
    sparse = (num_workers - 1) * (longest * (4 * input_dim + index_bytes) + 4)
    dense = 2 * (num_workers - 1) / num_workers * dense_rows * 4 * input_dim
    return sparse, dense


# ------------------------------------------------------------------------------- TF_CONFIG


def tf_config(hosts, index, task_type="worker"):
    """The `TF_CONFIG` JSON of task `index` in a cluster of `hosts` ("host:port") workers."""
    return json.dumps(
        {"cluster": {"worker": list(hosts)}, "task": {"type": task_type, "index": index}}
    )


__all__ = [
    "SUPPORTED_KERAS",
    "BackupAndRestore",
    "DistributedFitMixin",
    "UnsupportedKerasVersionError",
    "check_keras_version",
    "gradient_exchange_bytes",
    "is_chief",
    "is_multi_worker",
    "scale_loss",
    "tf_config",
]
