"""Optimizers that keep sparse gradients sparse."""

import warnings
import weakref

import keras
import tensorflow as tf

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

    Args:
      learning_rate: a float, a `keras.optimizers.schedules.LearningRateSchedule` or a
        callable, as for `keras.optimizers.Adam`.
      beta_1: decay of the first moment.
      beta_2: decay of the second moment.
      epsilon: added to the denominator.
      name: the optimizer's name.
      **kwargs: the base optimizer's arguments (`clipnorm`, `global_clipnorm`, `ema`, ...).
        `weight_decay` applies to dense gradients only.

    Example:

    >>> model.compile(optimizer=keras_layers.SparseAdam(1e-3), ...)  # doctest: +SKIP
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        name="sparse_adam",
        **kwargs,
    ):
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

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices) or variable.dtype != "float32":
            return super().update_step(gradient, variable, learning_rate)
        tf_lsh_ops.sparse_adam_apply(
            _tf_variable(variable),
            *self.moments(variable),
            gradient,
            **self.step_hyperparameters(learning_rate),
        )

    def moments(self, variable):
        """The `(m, v)` moment variables Adam keeps for `variable` (a tf.Variable each)."""
        m, v = _keras_compat.adam_moments(self, variable)
        return _tf_variable(m), _tf_variable(v)

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

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad", None)
        return config


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
