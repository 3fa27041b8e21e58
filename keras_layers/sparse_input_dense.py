"""`SparseInputDense`: a dense layer over very wide sparse inputs, with sparse gradients."""

import keras
import tensorflow as tf
from keras import activations, initializers, regularizers

import tf_lsh_ops
from keras_layers import _keras_compat
from keras_layers.optimizers import can_fuse_adam, mark_feature_rows


@keras.saving.register_keras_serializable(package="tf_lsh")
class SparseInputDense(keras.layers.Layer):
    """`activation(x @ kernel + bias)` for a `tf.SparseTensor` x, e.g. a 135k-wide bag of words.

    The first layer of an extreme-classification model (SLIDE's 135,909 -> 128). Each example
    reads only the kernel rows of its nonzero features, and the kernel's gradient is a
    `tf.IndexedSlices` over the features seen in the batch, which `SparseAdam` and `SGD` apply
    sparsely. In training (`training=True`, as `fit` calls it) one tf-lsh op each way does it
    (`tf_lsh_ops.sparse_input_matmul`); otherwise TensorFlow's own ops
    (`tf.nn.embedding_lookup_sparse`), so that exported SavedModels need no plugin. Dense inputs
    work too (a plain matmul).

    The kernel is `[input_dim, units]`, as in `keras.layers.Dense`: for sparse inputs a row per
    feature is the contiguous access.

    Args:
      units: output width.
      activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer: as for `keras.layers.Dense`.
      **kwargs: base `Layer` arguments.

    Example:

    >>> x = tf.SparseTensor([[0, 3], [1, 7]], [1.0, 2.0], [2, 10])
    >>> SparseInputDense(4)(x).shape
    TensorShape([2, 4])
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = units
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        _keras_compat.accept_sparse_inputs(self)
        self.supports_jit = False

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"SparseInputDense '{self.name}': the last dimension of input_shape "
                f"{tuple(input_shape)} (the number of input features) is unknown, and the kernel "
                "needs it. Give the inputs a static width (`MultiLabelData.dataset` does; in your "
                "own tf.data pipeline, `features.set_shape([None, num_features])`) or build the "
                "model first: `model.build((None, num_features))`."
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(int(input_dim), self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        mark_feature_rows(self.kernel)
        self.bias = (
            self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )
            if self.use_bias
            else None
        )

    def call(self, inputs, training=None):
        if isinstance(inputs, tf.SparseTensor):
            if training:
                # The variable itself, read in place: after its sparse updates, reading its
                # value would copy the whole kernel every step.
                outputs = tf_lsh_ops.sparse_input_matmul(inputs, self.kernel)
            else:  # standard TensorFlow ops: exported SavedModels load without tf-lsh
                outputs = _embedding_bag(inputs, self.kernel.value)
        else:
            outputs = tf.matmul(inputs, self.kernel)
        return self.activate(outputs)

    def activate(self, product):
        """The layer's output from the product `inputs @ kernel`."""
        if self.bias is not None:
            product = product + self.bias
        return self.activation(product) if self.activation is not None else product

    def fused_update(self, optimizer, inputs):
        """A `FusedKernelUpdate` of this layer's kernel by `optimizer` on `inputs`, or None
        where it cannot apply: dense `inputs`, an optimizer other than a fusable `SparseAdam`
        (see `SparseAdam.can_fuse`), a kernel regularizer, or an activity regularizer (which
        `__call__` adds, and the fused step does not call)."""
        eligible = (
            isinstance(inputs, tf.SparseTensor)
            and can_fuse_adam(optimizer)
            and self.kernel_regularizer is None
            and self.activity_regularizer is None
        )
        return FusedKernelUpdate(self, optimizer) if eligible else None

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
        }


class FusedKernelUpdate:
    """A training step's kernel gradient of a `SparseInputDense` on sparse inputs fused with
    its `SparseAdam` update (`tf_lsh_ops.sparse_input_matmul_adam`, or
    `..._rowwise_rmsprop` under `feature_rows="rowwise_rmsprop"`): the gradient rows are
    never written out. Made by `SparseInputDense.fused_update`.

    Use: `forward` inside the step's `tf.GradientTape`; take the loss's gradient for
    `product`; `apply` it (the optimizer built; its step is counted by the step's
    `apply_gradients`).
    """

    def __init__(self, layer, optimizer):
        self.layer = layer
        self.optimizer = optimizer
        self.product = None

    def forward(self, inputs, tape):
        """The layer's output on `inputs`, with `inputs @ kernel` computed off the tape (which
        would otherwise build its unfused gradient) and watched as `product`."""
        with tape.stop_recording():
            self.product = tf_lsh_ops.sparse_input_matmul(inputs, self.layer.kernel)
        tape.watch(self.product)
        self._inputs = inputs
        return self.layer.activate(self.product)

    def apply(self, product_gradient):
        """Updates the kernel from the loss's gradient for `product`."""
        if self.product is None:
            raise ValueError("FusedKernelUpdate.apply: call forward first")
        kernel, optimizer = self.layer.kernel, self.optimizer
        moments = optimizer.moments(kernel)
        # The hyperparameters are read before apply_gradients counts the step.
        if optimizer.updates_rowwise(kernel):
            tf_lsh_ops.sparse_input_matmul_rowwise_rmsprop(
                self._inputs,
                kernel,
                product_gradient,
                moments[1],
                **optimizer.rowwise_hyperparameters(),
            )
        else:
            tf_lsh_ops.sparse_input_matmul_adam(
                self._inputs, kernel, product_gradient, moments, **optimizer.step_hyperparameters()
            )


def _embedding_bag(inputs, kernel):
    """`inputs @ kernel` for a sparse `inputs`, with TensorFlow's ops only (sparse gradient)."""
    inputs = tf.sparse.reorder(inputs)
    feature_ids = tf.SparseTensor(inputs.indices, inputs.indices[:, 1], inputs.dense_shape)
    outputs = tf.nn.embedding_lookup_sparse(kernel, feature_ids, inputs, combiner="sum")
    # The lookup stops at the last row with a feature: trailing empty rows become zeros.
    missing = inputs.dense_shape[0] - tf.shape(outputs, out_type=tf.int64)[0]
    return tf.pad(outputs, [[0, missing], [0, 0]])
