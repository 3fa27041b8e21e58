"""Optimizers that keep sparse gradients sparse."""

import warnings
import weakref

import keras
import tensorflow as tf
from keras import ops

import tf_lsh_ops
from keras_layers import _keras_compat


@keras.saving.register_keras_serializable(package="tf_lsh")
class SparseAdam(keras.optimizers.Adam):
    """Adam that updates only the rows a sparse gradient touches (lazy Adam).

    Keras 3's Adam turns a `tf.IndexedSlices` gradient into a dense update of every row. For
    an `LSHDense` layer over 670k units that touches a few thousand rows per step, that is
    almost all of the step's time. `SparseAdam` applies `IndexedSlices` gradients with a
    fused, multi-threaded C++ kernel (`tf_lsh_ops.sparse_adam_apply`) to the touched rows of
    the variable and its two moments, in place; rows not touched keep their weights and
    moments unchanged (their moments do not decay, as in TensorFlow Addons' `LazyAdam`).
    Dense gradients get Keras' Adam unchanged.

    With `beta_1=0` the first moment would be the gradient itself, so none is kept: half the
    optimizer state and a third less memory traffic per update, on every variable (an output
    layer of 670k labels over 1,024 inputs keeps 2.7 GB less). The update is Adam's, with
    `m = gradient`.

    The kernels of `SparseInputDense` layers have a row per input feature, like an embedding
    table. With `feature_rows="rowwise_rmsprop"` they keep one second moment per row and no
    first moment (`tf_lsh_ops.sparse_rowwise_rmsprop_apply`; FBGEMM's rowwise optimizers keep
    that state for embedding tables): a third of lazy Adam's memory traffic on what is often
    the largest update of a step, and the kernel's optimizer state shrinks from two copies of
    it to one number per feature. On the extreme-classification example its steps were
    quicker and its P@5 higher after each epoch (benchmarks/README.md).

    Args:
      learning_rate: a float, a `keras.optimizers.schedules.LearningRateSchedule` or a
        callable, as for `keras.optimizers.Adam`.
      beta_1: decay of the first moment.
      beta_2: decay of the second moment.
      epsilon: added to the denominator.
      feature_rows: how `SparseInputDense` kernels are updated: `"adam"` (as every other
        variable) or `"rowwise_rmsprop"` (with `beta_2` and `epsilon`, no first moment).
      name: the optimizer's name.
      **kwargs: the base optimizer's arguments (`clipnorm`, `global_clipnorm`, `ema`, ...).
        `weight_decay` applies to dense gradients only.

    Example:

    >>> model.compile(optimizer=keras_layers.SparseAdam(1e-3), ...)  # doctest: +SKIP
    >>> optimizer = keras_layers.SparseAdam(1e-3, feature_rows="rowwise_rmsprop")
    >>> optimizer.get_config()["feature_rows"]
    'rowwise_rmsprop'
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        feature_rows="adam",
        name="sparse_adam",
        **kwargs,
    ):
        if feature_rows not in FEATURE_ROW_RULES:
            raise ValueError(
                f"SparseAdam: feature_rows must be one of {', '.join(map(repr, FEATURE_ROW_RULES))}"
                f", got {feature_rows!r}"
            )
        if kwargs.get("amsgrad"):
            raise ValueError("SparseAdam: amsgrad=True is not supported")
        kwargs.pop("amsgrad", None)
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=False,
            name=name,
            **kwargs,
        )
        self.feature_rows = feature_rows

    @property
    def keeps_first_moment(self):
        """Whether Adam's first moment is kept: not when `beta_1` is 0, where it would be the
        gradient itself."""
        return not (isinstance(self.beta_1, (int, float)) and self.beta_1 == 0)

    def build(self, var_list):
        """Adam's two moments for each variable (no first moment when `beta_1` is 0); one
        moment per row, and no first moment, for the kernels `updates_rowwise`."""
        if self.built:
            return
        self._rowwise = [
            self.feature_rows == "rowwise_rmsprop" and getattr(v, FEATURE_ROWS_ATTRIBUTE, False)
            for v in var_list
        ]
        if self.keeps_first_moment and not any(self._rowwise):
            return super().build(var_list)
        keras.optimizers.Optimizer.build(self, var_list)
        momentums, velocities = [], []
        for variable, rowwise in zip(var_list, self._rowwise, strict=True):
            momentums.append(
                self.add_variable_from_reference(variable, "momentum")
                if self.keeps_first_moment and not rowwise
                else None
            )
            velocities.append(
                self.add_variable(
                    shape=(variable.shape[0], 1),
                    dtype=variable.dtype,
                    name=f"{variable.path.replace('/', '_')}_velocity",
                )
                if rowwise
                else self.add_variable_from_reference(variable, "velocity")
            )
        _keras_compat.set_adam_moments(self, momentums, velocities)

    def updates_rowwise(self, variable):
        """Whether `variable` (a model variable, or the tf.Variable behind it) gets the
        rowwise rule: decided at `build` for the `SparseInputDense` kernels (see
        `mark_feature_rows`) under `feature_rows="rowwise_rmsprop"`."""
        return self._rowwise[_keras_compat.variable_index(self, variable)]

    def update_step(self, gradient, variable, learning_rate):
        m, v = self.moments(variable)
        if self.updates_rowwise(variable):
            if not isinstance(gradient, tf.IndexedSlices):  # every row, as a dense step would
                rows = tf.range(tf.shape(gradient)[0])
                gradient = tf.IndexedSlices(gradient, rows, tf.shape(gradient, tf.int64))
            tf_lsh_ops.sparse_rowwise_rmsprop_apply(
                _tf_variable(variable),
                v,
                gradient,
                **self.rowwise_hyperparameters(learning_rate),
            )
            return
        if not isinstance(gradient, tf.IndexedSlices) or variable.dtype != "float32":
            if m is None:
                return self._dense_step_without_first_moment(gradient, variable, learning_rate)
            return super().update_step(gradient, variable, learning_rate)
        tf_lsh_ops.sparse_adam_apply(
            _tf_variable(variable), m, v, gradient, **self.step_hyperparameters(learning_rate)
        )

    def _dense_step_without_first_moment(self, gradient, variable, learning_rate):
        """Keras Adam's dense update with `m = gradient` (`beta_1` is 0)."""
        _, v = _keras_compat.adam_moments(self, variable)
        gradient = ops.cast(tf.convert_to_tensor(gradient), variable.dtype)
        beta_2_power = ops.power(
            ops.cast(self.beta_2, variable.dtype), ops.cast(self.iterations + 1, variable.dtype)
        )
        alpha = ops.cast(learning_rate, variable.dtype) * ops.sqrt(1 - beta_2_power)
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        self.assign_sub(
            variable,
            ops.divide(ops.multiply(gradient, alpha), ops.add(ops.sqrt(v), self.epsilon)),
        )

    def moments(self, variable):
        """The `(m, v)` moment variables Adam keeps for `variable` (a tf.Variable each); m is
        None when `beta_1` is 0, and for a variable updated by rows (`feature_rows`), whose v
        has one value per row."""
        m, v = _keras_compat.adam_moments(self, variable)
        return (None if m is None else _tf_variable(m)), _tf_variable(v)

    def step_hyperparameters(self, learning_rate=None):
        """The keyword arguments of `tf_lsh_ops.sparse_adam_apply` (and of the fused
        `sparse_gather_matmul_adam`) for the step being applied; `learning_rate` defaults to
        the current one."""
        return dict(
            learning_rate=self.learning_rate if learning_rate is None else learning_rate,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            step=self.iterations + 1,  # apply() counts the step after the updates
        )

    def rowwise_hyperparameters(self, learning_rate=None):
        """The keyword arguments of `tf_lsh_ops.sparse_rowwise_rmsprop_apply` (and of the fused
        `sparse_input_matmul_rowwise_rmsprop`) for the step being applied."""
        hyper = self.step_hyperparameters(learning_rate)
        del hyper["beta_1"]
        return hyper

    def can_fuse(self):
        """Whether a training step may apply this optimizer inside a fused backward pass.

        `LSHClassifier` then updates its output layer with `tf_lsh_ops.sparse_gather_matmul_adam`
        (the same lazy Adam, bit for bit). Not with gradient clipping, EMA, gradient
        accumulation or loss scaling (they need the gradients first), nor for a subclass that
        changes `update_step`.
        """
        return (
            type(self).update_step is SparseAdam.update_step
            and self.clipnorm is None
            and self.clipvalue is None
            and self.global_clipnorm is None
            and not self.use_ema
            and not self.gradient_accumulation_steps
            and self.loss_scale_factor is None
        )

    def load_own_variables(self, store):
        """Keras' loading of the optimizer's state, which also reads the state of a
        `SparseAdam(beta_1=0)` saved while it still kept first moments: those are skipped
        (each was the last gradient, which no update reads any more)."""
        stale = self._saved_first_moments(store)
        if stale:
            kept = sorted((key for key in store.keys() if key not in stale), key=int)
            store = {str(i): store[key] for i, key in enumerate(kept)}
        super().load_own_variables(store)

    def _saved_first_moments(self, store):
        """The keys of `store` that hold first moments this optimizer does not keep, if
        `store` has the layout it had while keeping them (a momentum saved before each
        velocity of a variable not updated by rows); else an empty set."""
        if not self.built or self.keeps_first_moment or len(store.keys()) == len(self.variables):
            return set()
        elementwise_velocities = {
            id(v)
            for v, rowwise in zip(_keras_compat.adam_velocities(self), self._rowwise, strict=True)
            if v is not None and not rowwise
        }
        stale, position = set(), 0
        for variable in self.variables:
            if id(variable) in elementwise_velocities:
                stale.add(str(position))
                position += 1
            position += 1
        return stale if position == len(store.keys()) else set()

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad", None)
        config["feature_rows"] = self.feature_rows
        return config


# `SparseAdam(feature_rows=...)`'s rules for the kernels of `SparseInputDense` layers.
FEATURE_ROW_RULES = ("adam", "rowwise_rmsprop")
FEATURE_ROWS_ATTRIBUTE = "tf_lsh_feature_rows"


def mark_feature_rows(variable):
    """Marks `variable` as a matrix with a row per input feature (a `SparseInputDense`
    kernel), for `SparseAdam(feature_rows=...)`."""
    setattr(variable, FEATURE_ROWS_ATTRIBUTE, True)


def can_fuse_adam(optimizer):
    """Whether a training step may apply `optimizer` inside a fused backward pass: a
    `SparseAdam` that `can_fuse`, outside `tf.distribute` (whose replicas' gradients are
    all-reduced first)."""
    return (
        isinstance(optimizer, SparseAdam)
        and optimizer.can_fuse()
        and not tf.distribute.has_strategy()
    )


# Optimizers already warned about (each is named once).
_WARNED = weakref.WeakSet()


def warn_if_dense_updates(optimizer, layers, caller):
    """Warns, once per optimizer, if `optimizer` would apply the sparse gradients of `layers`
    (`LSHDense`, `SparseInputDense`) as dense updates of every row: Keras 3's optimizers other
    than plain SGD densify `tf.IndexedSlices`, which silently makes a step over a wide layer
    many times slower. `caller` names who checks."""
    if not layers or optimizer is None or optimizer in _WARNED:
        return
    sparse = isinstance(optimizer, SparseAdam) or (
        isinstance(optimizer, keras.optimizers.SGD) and not optimizer.momentum
    )
    if sparse:
        return
    _WARNED.add(optimizer)
    names = ", ".join(repr(layer.name) for layer in layers)
    warnings.warn(
        f"{caller}: {type(optimizer).__name__} applies the sparse gradients of {names} as "
        "dense updates of every row (Keras 3 densifies tf.IndexedSlices), which can make a "
        "step many times slower. Compile with keras_layers.SparseAdam (or SGD without "
        "momentum) to update only the rows each step touches.",
        stacklevel=3,
    )


def _tf_variable(variable):
    """The tf.Variable behind a Keras variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable
