"""Every use of Keras internals in keras_layers, and the Keras versions they were checked with.

Keras 3 has no public API for a few things tf-lsh needs (an optimizer's Adam moments, the
trainer's build and step-function hooks under `tf.distribute`, the backup callback's restore
and save hooks, ...). They are reached here only, through small named functions and two hook
classes, so that a new Keras is checked in one place: run the tests with it, then widen
`SUPPORTED_KERAS`. setup.py reads `SUPPORTED_KERAS` from this file for its requirement, and
tests/test_keras_compat.py checks that requirements.txt pins a Keras inside it.
"""

import re

import keras

# Keras versions the internals below were written and tested for: [minimum, maximum).
SUPPORTED_KERAS = ("3.15.0", "3.16.0")


class UnsupportedKerasVersionError(RuntimeError):
    """Distributed `fit` of a tf-lsh model with a Keras version its fixes were not made for."""


def _version_tuple(version):
    """(major, minor, patch) of a version string; "3.16.0rc1" counts as (3, 16, 0)."""
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(version))
    if match is None:
        raise UnsupportedKerasVersionError(f"tf-lsh: cannot parse the Keras version {version!r}")
    return tuple(int(part or 0) for part in match.groups())


def check_keras_version(version=None):
    """Raises `UnsupportedKerasVersionError` unless `version` (default: the installed Keras)
    is in `SUPPORTED_KERAS`."""
    version = keras.__version__ if version is None else version
    low, high = SUPPORTED_KERAS
    if not _version_tuple(low) <= _version_tuple(version) < _version_tuple(high):
        raise UnsupportedKerasVersionError(
            f"tf-lsh: distributed training with Keras {version} is not supported. "
            "LSHClassifier works around known problems of Keras 3's TensorFlow trainer under "
            "tf.distribute (_maybe_symbolic_build reducing a batch of PerReplica values; "
            "reduce_per_replica reducing scalar logs along axis 0), and those workarounds rely "
            f"on Keras internals that were only checked for Keras >= {low}, < {high}. Install "
            f"a Keras in that range (pip install 'keras>={low},<{high}'), or train without a "
            "distribution strategy. To support a new Keras, check whether it still needs the "
            "workarounds, run tests/test_distributed.py with it and widen "
            "keras_layers._keras_compat.SUPPORTED_KERAS."
        )


# ---------------------------------------------------------------------- layers and optimizers


def loss_tracker(model):
    """The `keras.metrics.Mean` a compiled model's train and test steps report the loss in."""
    return model._loss_tracker


def nested_layers(model):
    """Every layer inside `model`, nested models' layers included (not `model` itself)."""
    return list(model._flatten_layers(include_self=False))


def accept_sparse_inputs(layer):
    """Lets Keras hand `layer` a `tf.SparseTensor` instead of densifying it first."""
    layer._supports_sparse_inputs = True


def variable_index(optimizer, variable):
    """The position of `variable` (a model variable, or the tf.Variable behind it, as
    `update_step` gets it) in the list a built optimizer was built with."""
    return optimizer._get_variable_index(variable)


def adam_moments(optimizer, variable):
    """The `(m, v)` Keras variables a `keras.optimizers.Adam` keeps for `variable`."""
    index = variable_index(optimizer, variable)
    return optimizer._momentums[index], optimizer._velocities[index]


def adam_velocities(optimizer):
    """A built `keras.optimizers.Adam`'s second moments, one per variable in build order (None
    for a variable it keeps none for)."""
    return list(optimizer._velocities)


def set_adam_moments(optimizer, momentums, velocities):
    """Gives a `keras.optimizers.Adam` its moments, one of each per variable in build order
    (a momentum may be None), as `Adam.build` would."""
    optimizer._momentums, optimizer._velocities = list(momentums), list(velocities)


# ---------------------------------------------------------------------- tf.distribute and fit


def creation_strategy(model):
    """The `tf.distribute` strategy `model` was created under, or None (the default one)."""
    return getattr(model, "_distribute_strategy", None)


def in_multi_worker_mode(strategy):
    """Whether a `MultiWorkerMirroredStrategy` spans several workers."""
    return strategy.extended._in_multi_worker_mode()


def set_initial_epoch(model, epoch):
    """Makes the next `model.fit` start at `epoch` (as Keras' own BackupAndRestore does)."""
    model._initial_epoch = epoch


class TrainerHooks:
    """Keras' TensorFlow trainer hooks that `fit` calls, under names of our own.

    A model class puts a subclass first among its bases and overrides `build_for_fit` (called
    before the first step with the first batch or an iterator over the data; Keras' own builds
    the model symbolically) and `wrap_step_function` (makes the function `fit`, `evaluate`
    and `predict` run from a step function; Keras' own distributes it over the strategy).
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        return self.build_for_fit(iterator=iterator, data_batch=data_batch)

    def _make_function(self, step_function):
        return self.wrap_step_function(step_function)

    def build_for_fit(self, iterator=None, data_batch=None):
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def wrap_step_function(self, step_function):
        return super()._make_function(step_function)

    def build_metrics_and_optimizer(self, data_batch):
        """Keras' symbolic build of the compiled metrics and the optimizer from `data_batch`
        (the model itself must be built already)."""
        self._symbolic_build(data_batch=data_batch)


class BackupAndRestoreHooks(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` with its restore and save steps under names of our
    own: a subclass overrides `restore_backup` and `write_backup`."""

    def _load_model(self):
        self.restore_backup()

    def _save_model(self):
        self.write_backup()

    def restore_backup(self):
        super()._load_model()

    def write_backup(self):
        super()._save_model()

    @property
    def metadata_path(self):
        """The JSON file naming the last backup's epoch."""
        return self._training_metadata_path

    @property
    def current_epoch(self):
        """The epoch whose end is being backed up."""
        return self._current_epoch
