"""`sparse_gather_matmul`: each example multiplies its input by its own few weight rows."""

import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops

from tf_lsh_ops._checks import as_resource_variable, as_tensor, require_dtype, variable_handles
from tf_lsh_ops._loader import op_type, ops
from tf_lsh_ops.sparse_adam import adam_inputs, adam_no_momentum_inputs, rowwise_rmsprop_inputs

_OP = "SparseGatherMatmul"


def sparse_gather_matmul(inputs, weights, biases, indices, name=None):
    """Computes `out[b, k] = inputs[b] . weights[indices[b, k]] + biases[indices[b, k]]`.

    Only the rows named in `indices` are read, so the cost is `B * K * D`, not `B * N * D`.
    The gradient with respect to `weights` and `biases` is a `tf.IndexedSlices` over the distinct
    rows used in the batch (duplicates summed), so optimizers update only those rows.

    When `weights` and `biases` are variables (`tf.Variable` or Keras variables), the op reads
    them in place, without the full copy that TensorFlow makes on every read of a variable
    that has had sparse updates.

    Args:
      inputs: float32 `[B, D]`.
      weights: float32 `[N, D]`, neuron-major: row `j` is neuron `j`'s weight vector. A tensor
        or a variable.
      biases: float32 `[N]`, a tensor or a variable (the same kind as `weights`).
      indices: int32 `[B, K]`, the active neurons of each example; `-1` pads (output 0, no
        gradient). Or `[1, K]`: one active set for the whole batch, computed as dense
        blocked matrix products over the `K` gathered rows (faster than the same set
        repeated per example).
      name: optional op name.

    Returns:
      float32 `[B, K]`.

    Raises:
      tf.errors.InvalidArgumentError: wrong dtypes, ranks or sizes, or an index outside
        `[-1, N)`.

    Example:

    >>> x = tf.constant([[1.0, 2.0]])
    >>> w = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> b = tf.constant([0.0, 0.0, 5.0])
    >>> sparse_gather_matmul(x, w, b, tf.constant([[2, -1]])).numpy()
    array([[8., 0.]], dtype=float32)
    """
    inputs = as_tensor(_OP, "inputs", inputs, tf.float32)
    indices = as_tensor(_OP, "indices", indices, tf.int32)
    weight_variable = as_resource_variable(weights)
    bias_variable = as_resource_variable(biases)
    if weight_variable is not None and bias_variable is not None:
        require_dtype(_OP, "weights", weight_variable, tf.float32)
        require_dtype(_OP, "biases", bias_variable, tf.float32)
        # Lets GradientTape and tf.function see the variables read through their handles.
        resource_variable_ops.variable_accessed(weight_variable)
        resource_variable_ops.variable_accessed(bias_variable)
        return ops.tf_lsh_resource_sparse_gather_matmul(
            inputs, weight_variable.handle, bias_variable.handle, indices, name=name
        ).output
    weights = as_tensor(_OP, "weights", weights, tf.float32)
    biases = as_tensor(_OP, "biases", biases, tf.float32)
    return ops.tf_lsh_sparse_gather_matmul(inputs, weights, biases, indices, name=name).output


def sparse_gather_matmul_grouped(inputs, weights, biases, indices, name=None):
    """`sparse_gather_matmul` on variables, also returning its grouping of `indices`.

    For a training step that fuses the backward pass with the optimizer
    (`sparse_gather_matmul_adam`): the grouping (distinct rows, row splits, positions) is what
    the backward pass walks.

    Returns:
      `(output, grouping)`: float32 `[B, K]` and a tuple of three int32 vectors.
    """
    weight_variable, bias_variable = as_resource_variable(weights), as_resource_variable(biases)
    if weight_variable is None or bias_variable is None:
        raise ValueError(f"{_OP}: the grouped form takes weights and biases as variables")
    resource_variable_ops.variable_accessed(weight_variable)
    resource_variable_ops.variable_accessed(bias_variable)
    result = ops.tf_lsh_resource_sparse_gather_matmul(
        as_tensor(_OP, "inputs", inputs, tf.float32),
        weight_variable.handle,
        bias_variable.handle,
        as_tensor(_OP, "indices", indices, tf.int32),
        name=name,
    )
    return result.output, (result.rows, result.row_splits, result.positions)


def sparse_gather_matmul_adam(
    inputs,
    weights,
    biases,
    indices,
    grouping,
    grad_output,
    moments,
    *,
    learning_rate,
    beta_1,
    beta_2,
    epsilon,
    step,
    name=None,
):
    """The backward pass of `sparse_gather_matmul` fused with lazy Adam; returns `d_inputs`.

    Each touched row's gradient goes from the CPU cache straight into the Adam update of
    `weights`, `biases` and their moments (in place, as `sparse_adam_apply` would do with the
    `IndexedSlices` gradients), instead of being written out and read back: the same result,
    bit for bit, with about a third less memory traffic on wide layers. `d_inputs` is computed
    with the weights before the update.

    Args:
      inputs, weights, biases, indices: as given to `sparse_gather_matmul_grouped`.
      grouping: its second result.
      grad_output: float32 `[B, K]`, the gradient of the loss with respect to its output.
      moments: `(weights_m, weights_v, biases_m, biases_v)` variables; both first moments
        None when `beta_1` is 0 (see `sparse_adam_apply`).
      learning_rate, beta_1, beta_2, epsilon: Adam's hyperparameters.
      step: the 1-based step number.
      name: optional op name.

    Returns:
      float32 `[B, D]`, the gradient with respect to `inputs`.
    """
    weights_m, weights_v, biases_m, biases_v = moments
    if weights_m is None and biases_m is None:
        op_name = "ResourceSparseGatherMatmulGradAdamNoMomentum"
        handles = variable_handles(
            op_name, weights=weights, biases=biases, weights_v=weights_v, biases_v=biases_v
        )
        return ops.tf_lsh_resource_sparse_gather_matmul_grad_adam_no_momentum(
            as_tensor(op_name, "inputs", inputs, tf.float32),
            *handles,
            *grouping,
            as_tensor(op_name, "grad_output", grad_output, tf.float32),
            as_tensor(op_name, "indices", indices, tf.int32),
            *adam_no_momentum_inputs(op_name, learning_rate, beta_1, beta_2, epsilon, step),
            name=name,
        )
    handles = variable_handles(
        _OP,
        weights=weights,
        biases=biases,
        weights_m=weights_m,
        weights_v=weights_v,
        biases_m=biases_m,
        biases_v=biases_v,
    )
    return ops.tf_lsh_resource_sparse_gather_matmul_grad_adam(
        as_tensor(_OP, "inputs", inputs, tf.float32),
        *handles,
        *grouping,
        as_tensor(_OP, "grad_output", grad_output, tf.float32),
        as_tensor(_OP, "indices", indices, tf.int32),
        *adam_inputs(learning_rate, beta_1, beta_2, epsilon, step),
        name=name,
    )


def _sparse_parts(op_name, inputs):
    """(indices, float32 values, dense_shape) of a tf.SparseTensor op input, checked."""
    if not isinstance(inputs, tf.SparseTensor):
        raise tf.errors.InvalidArgumentError(
            None, None, f"{op_name}: inputs must be a tf.SparseTensor, got {type(inputs).__name__}"
        )
    values = as_tensor(op_name, "inputs.values", inputs.values, tf.float32)
    return inputs.indices, values, inputs.dense_shape


def sparse_input_gather_matmul(inputs, weights, biases, indices, name=None):
    """`sparse_gather_matmul` for a 2-D `tf.SparseTensor` of inputs.

    `out[b, k] = sum over row b's entries (f, v) of v * weights[indices[b, k], f] +
    biases[indices[b, k]]`: the cost is `B * K * nonzeros per row`, and no `[B, D]` tensor is
    formed. This is how an `LSHDense` layer reads the sparse activations of the one before it.
    Gradients: for `inputs.values` (the previous layer's activations), and `tf.IndexedSlices`
    over the distinct rows of `weights` and `biases` in `indices`.

    Args:
      inputs: float32 `tf.SparseTensor` `[B, D]` (repeated entries add up).
      weights: float32 `[N, D]`, neuron-major.
      biases: float32 `[N]`.
      indices: int32 `[B, K]`, -1 pads.
      name: optional op name.

    Returns:
      float32 `[B, K]`.
    """
    op_name = "SparseInputGatherMatmul"
    return ops.tf_lsh_sparse_input_gather_matmul(
        *_sparse_parts(op_name, inputs),
        as_tensor(op_name, "weights", weights, tf.float32),
        as_tensor(op_name, "biases", biases, tf.float32),
        as_tensor(op_name, "indices", indices, tf.int32),
        name=name,
    )


def sparse_input_products(inputs, weights, name=None):
    """A 2-D `tf.SparseTensor` of inputs times every unit of a neuron-major kernel.

    `out[b, u] = sum over row b's entries (f, v) of v * weights[u, f]`: the same values as
    `tf.sparse.sparse_dense_matmul(inputs, weights, adjoint_b=True)`, which transposes the
    whole kernel first (a gigabyte at 16k x 16k units). Unit by unit, each kernel row is read
    once for the whole batch, so the cost is `units * nonzeros of the batch` reads from cache.
    `sparse_input_gather_matmul` with every unit and zero biases gives the same bits, reading
    the kernel once per example. Not differentiable (an `LSHDense` selector's exact products).

    Args:
      inputs: float32 `tf.SparseTensor` `[B, D]` (repeated entries add up).
      weights: float32 `[N, D]`, neuron-major.
      name: optional op name.

    Returns:
      float32 `[B, N]`.
    """
    op_name = "SparseInputProducts"
    return ops.tf_lsh_sparse_input_products(
        *_sparse_parts(op_name, inputs),
        as_tensor(op_name, "weights", weights, tf.float32),
        name=name,
    )


tf.no_gradient(op_type("SparseInputProducts"))


@tf.RegisterGradient(op_type("SparseInputGatherMatmul"))
def _sparse_input_gather_matmul_grad(op, grad_output):
    sparse_indices, sparse_values, dense_shape, weights, biases, indices = op.inputs
    grad_values, rows, grad_weight_rows, grad_bias_rows = (
        ops.tf_lsh_sparse_input_gather_matmul_grad(
            sparse_indices, sparse_values, dense_shape, weights, indices, grad_output
        )
    )
    return [
        None,
        grad_values,
        None,
        tf.IndexedSlices(grad_weight_rows, rows, tf.shape(weights)),
        tf.IndexedSlices(grad_bias_rows, rows, tf.shape(biases)),
        None,
    ]


def sparse_input_gather_matmul_lazy_adam(
    inputs,
    weights,
    indices,
    grad_output,
    moments,
    *,
    learning_rate,
    beta_1,
    beta_2,
    epsilon,
    step,
    name=None,
):
    """The backward pass of `sparse_input_gather_matmul` with lazy Adam per weight on `weights`.

    Each weight `weights[u, f]` of an active unit u on a feature f present in one of u's
    examples gets its gradient (summed over those examples) and one Adam step, in place, with
    its moments; every other weight and moment keeps its bits. A step thus costs the batch's
    (active unit, nonzero input) pairs, where a `tf.IndexedSlices` gradient would carry whole
    rows of `input_dim` floats for every active unit (and `sparse_adam_apply` update them).
    Unlike Adam on rows, a weight whose input is zero in the batch keeps its moments (lazy per
    weight, as rows are in `sparse_adam_apply`). The values' gradient is computed with the
    weights before the update.

    Args:
      inputs: float32 `tf.SparseTensor` `[B, D]`, as given to `sparse_input_gather_matmul`.
      weights: float32 `[N, D]` variable.
      indices: int32 `[B, K]`, as given to `sparse_input_gather_matmul`.
      grad_output: float32 `[B, K]`, the gradient of the loss with respect to its output.
      moments: `(weights_m, weights_v)` variables of the weights' shape.
      learning_rate, beta_1, beta_2, epsilon: Adam's hyperparameters.
      step: the 1-based step number.
      name: optional op name.

    Returns:
      `(grad_values, bias_gradient)`: float32 `[nnz]`, the gradient of `inputs.values`, and the
      biases' gradient as a `tf.IndexedSlices` over the distinct active units.
    """
    op_name = "ResourceSparseInputGatherMatmulGradLazyAdam"
    weights_m, weights_v = moments
    handles = variable_handles(op_name, weights=weights, weights_m=weights_m, weights_v=weights_v)
    grad_values, rows, grad_bias_rows = (
        ops.tf_lsh_resource_sparse_input_gather_matmul_grad_lazy_adam(
            *_sparse_parts(op_name, inputs),
            *handles,
            as_tensor(op_name, "indices", indices, tf.int32),
            as_tensor(op_name, "grad_output", grad_output, tf.float32),
            *adam_inputs(learning_rate, beta_1, beta_2, epsilon, step),
            name=name,
        )
    )
    num_units = resource_variable_ops.variable_shape(handles[0])[:1]
    return grad_values, tf.IndexedSlices(grad_bias_rows, rows, num_units)


def sparse_input_gather_matmul_lazy_sgd(
    inputs, weights, indices, grad_output, *, learning_rate, hogwild=False, name=None
):
    """`sparse_input_gather_matmul_lazy_adam` with plain SGD per weight, and no moments.

    The same weights change (an active unit's weights on the features present in its
    examples), each by `-learning_rate` times its gradient; every other weight keeps its bits.
    No state besides `weights`: where Adam keeps two moments as large as the kernel, a hidden
    layer of 65,536 x 65,536 units needs 16 GiB instead of 48.

    With `hogwild=True` the update runs as SLIDE's: examples are split between threads, and
    each applies its own gradient to the weights at once, unsynchronised, reading each weight
    for its values' gradient as it writes it (one pass over the weights, not two, and no
    grouping by unit). An example's values' gradient then sees the updates of the examples
    before it, and two threads updating one weight at once may lose one of the updates:
    results vary from run to run.

    Args:
      inputs: float32 `tf.SparseTensor` `[B, D]`, as given to `sparse_input_gather_matmul`.
      weights: float32 `[N, D]` variable.
      indices: int32 `[B, K]`, as given to `sparse_input_gather_matmul`.
      grad_output: float32 `[B, K]`, the gradient of the loss with respect to its output.
      learning_rate: the step size (a float or float32 scalar).
      hogwild: update unsynchronised, example by example (see above).
      name: optional op name.

    Returns:
      `(grad_values, bias_gradient)`, as `sparse_input_gather_matmul_lazy_adam` returns them.

    Example:
      >>> inputs = tf.sparse.from_dense([[0.0, 2.0, 0.0]])
      >>> weights = tf.Variable([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
      >>> _ = sparse_input_gather_matmul_lazy_sgd(
      ...     inputs, weights, [[1]], [[0.5]], learning_rate=0.1)
      >>> weights.numpy().tolist()  # unit 1 on feature 1: 1 - 0.1 * 0.5 * 2
      [[1.0, 1.0, 1.0], [1.0, 0.8999999761581421, 1.0]]
    """
    op_name = "ResourceSparseInputGatherMatmulGradLazySgd"
    if not isinstance(hogwild, bool):
        raise TypeError(f"{op_name}: hogwild must be True or False, got {hogwild!r}")
    (handle,) = variable_handles(op_name, weights=weights)
    grad_values, rows, grad_bias_rows = (
        ops.tf_lsh_resource_sparse_input_gather_matmul_grad_lazy_sgd(
            *_sparse_parts(op_name, inputs),
            handle,
            as_tensor(op_name, "indices", indices, tf.int32),
            as_tensor(op_name, "grad_output", grad_output, tf.float32),
            tf.cast(learning_rate, tf.float32),
            hogwild=hogwild,
            name=name,
        )
    )
    num_units = resource_variable_ops.variable_shape(handle)[:1]
    return grad_values, tf.IndexedSlices(grad_bias_rows, rows, num_units)


def sparse_input_matmul(inputs, kernel, name=None):
    """`inputs @ kernel` for a 2-D `tf.SparseTensor`, with a sparse gradient for `kernel`.

    `out[b, :] = sum over row b's entries (f, v) of v * kernel[f, :]`: only the kernel rows of
    the features present are read, and the kernel's gradient is a `tf.IndexedSlices` over the
    distinct features of the batch (`tf.sparse.sparse_dense_matmul` gives a dense one). The
    values get a gradient too, skipped when a `GradientTape` knows that nothing differentiates
    them (inputs that are data save that pass over the kernel rows). One op each way, where
    `tf.nn.embedding_lookup_sparse` runs a chain of them; the first layer over a bag of words
    (`keras_layers.SparseInputDense`) uses it.

    >>> x = tf.SparseTensor([[0, 1], [0, 1], [1, 0]], [1.0, 2.0, 5.0], [2, 3])
    >>> sparse_input_matmul(x, tf.constant([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])).numpy()
    array([[0., 3.],
           [5., 0.]], dtype=float32)

    Args:
      inputs: float32 `tf.SparseTensor` `[B, F]`, entries in any order (repeated entries add
        up).
      kernel: float32 `[F, H]`, feature-major: a tensor, or a variable (`tf.Variable` or
        Keras), then read in place (no copy even after sparse updates).
      name: optional op name.

    Returns:
      float32 `[B, H]`.
    """
    op_name = "SparseInputMatmul"
    parts = _sparse_parts(op_name, inputs)
    variable = as_resource_variable(kernel)
    if variable is not None:
        require_dtype(op_name, "kernel", variable, tf.float32)
        # Lets GradientTape and tf.function see the variable read through its handle.
        resource_variable_ops.variable_accessed(variable)
        return ops.tf_lsh_resource_sparse_input_matmul(*parts, variable.handle, name=name)
    kernel = as_tensor(op_name, "kernel", kernel, tf.float32)
    return ops.tf_lsh_sparse_input_matmul(*parts, kernel, name=name)


def sparse_input_matmul_adam(
    inputs, kernel, grad_output, moments, *, learning_rate, beta_1, beta_2, epsilon, step, name=None
):
    """The kernel's gradient of `sparse_input_matmul` fused with lazy Adam on that kernel.

    Each feature's gradient row (`sum of v * grad_output[b]` over its entries `(b, f, v)`)
    goes from the CPU cache straight into the Adam update of its kernel row and moments, in
    place, instead of being written out as a `tf.IndexedSlices` and read back by
    `sparse_adam_apply`: the same result, bit for bit. The values get no gradient (a first
    layer's inputs are data). `LSHClassifier` trains a `SparseInputDense` first layer this way.

    Args:
      inputs: float32 `tf.SparseTensor` `[B, F]`, as given to `sparse_input_matmul`.
      kernel: float32 `[F, H]` variable.
      grad_output: float32 `[B, H]`, the gradient of the loss with respect to the product.
      moments: `(kernel_m, kernel_v)` variables of the kernel's shape; `kernel_m` None when
        `beta_1` is 0 (see `sparse_adam_apply`).
      learning_rate, beta_1, beta_2, epsilon: Adam's hyperparameters.
      step: the 1-based step number.
      name: optional op name.

    Returns:
      The op (in graph mode), or None eagerly.
    """
    kernel_m, kernel_v = moments
    if kernel_m is None:
        op_name = "ResourceSparseInputMatmulGradAdamNoMomentum"
        return ops.tf_lsh_resource_sparse_input_matmul_grad_adam_no_momentum(
            *_sparse_parts(op_name, inputs),
            *variable_handles(op_name, kernel=kernel, kernel_v=kernel_v),
            as_tensor(op_name, "grad_output", grad_output, tf.float32),
            *adam_no_momentum_inputs(op_name, learning_rate, beta_1, beta_2, epsilon, step),
            name=name,
        )
    op_name = "ResourceSparseInputMatmulGradAdam"
    handles = variable_handles(op_name, kernel=kernel, kernel_m=kernel_m, kernel_v=kernel_v)
    return ops.tf_lsh_resource_sparse_input_matmul_grad_adam(
        *_sparse_parts(op_name, inputs),
        *handles,
        as_tensor(op_name, "grad_output", grad_output, tf.float32),
        *adam_inputs(learning_rate, beta_1, beta_2, epsilon, step),
        name=name,
    )


def sparse_input_matmul_rowwise_rmsprop(
    inputs, kernel, grad_output, kernel_v, *, learning_rate, beta_2, epsilon, step, name=None
):
    """The kernel's gradient of `sparse_input_matmul` fused with lazy rowwise RMSprop on that
    kernel (`sparse_rowwise_rmsprop_apply`: one second moment per feature row, no first
    moment).

    As `sparse_input_matmul_adam`, each feature's gradient row goes from the CPU cache
    straight into the update of its kernel row and moment, in place: the same result, bit for
    bit, as the gradient followed by `sparse_rowwise_rmsprop_apply`. `LSHClassifier` trains a
    `SparseInputDense` first layer this way under `SparseAdam(feature_rows="rowwise_rmsprop")`.

    Args:
      inputs: float32 `tf.SparseTensor` `[B, F]`, as given to `sparse_input_matmul`.
      kernel: float32 `[F, H]` variable.
      grad_output: float32 `[B, H]`, the gradient of the loss with respect to the product.
      kernel_v: float32 variable with one value per feature (`[F]` or `[F, 1]`).
      learning_rate, beta_2, epsilon: the rule's hyperparameters.
      step: the 1-based step number.
      name: optional op name.

    Returns:
      The op (in graph mode), or None eagerly.
    """
    op_name = "ResourceSparseInputMatmulGradRowwiseRmsprop"
    return ops.tf_lsh_resource_sparse_input_matmul_grad_rowwise_rmsprop(
        *_sparse_parts(op_name, inputs),
        *variable_handles(op_name, kernel=kernel, kernel_v=kernel_v),
        as_tensor(op_name, "grad_output", grad_output, tf.float32),
        *rowwise_rmsprop_inputs(learning_rate, beta_2, epsilon, step),
        name=name,
    )


def _sparse_input_matmul_gradients(grad_op, op, grad_output, kernel_shape):
    sparse_indices, sparse_values, dense_shape, kernel = op.inputs
    # Under a GradientTape, inputs nobody differentiates are listed: the values are usually
    # data (a bag of words), and their gradient would cost a second pass over the kernel rows.
    values_gradient = 1 not in (getattr(op, "skip_input_indices", None) or ())
    grad_values, rows, grad_kernel_rows = grad_op(
        sparse_indices,
        sparse_values,
        dense_shape,
        kernel,
        grad_output,
        values_gradient=values_gradient,
    )
    return [
        None,
        grad_values if values_gradient else None,
        None,
        tf.IndexedSlices(grad_kernel_rows, rows, kernel_shape),
    ]


@tf.RegisterGradient(op_type("SparseInputMatmul"))
def _sparse_input_matmul_grad(op, grad_output):
    return _sparse_input_matmul_gradients(
        ops.tf_lsh_sparse_input_matmul_grad, op, grad_output, tf.shape(op.inputs[3])
    )


@tf.RegisterGradient(op_type("ResourceSparseInputMatmul"))
def _resource_sparse_input_matmul_grad(op, grad_output):
    return _sparse_input_matmul_gradients(
        ops.tf_lsh_resource_sparse_input_matmul_grad,
        op,
        grad_output,
        resource_variable_ops.variable_shape(op.inputs[3]),
    )


def _gradients(grad_op, op, grad_output, weights_shape, biases_shape):
    """[d_inputs, d_weights, d_biases, None] from the forward op's grouping of the indices."""
    inputs, weights, indices = op.inputs[0], op.inputs[1], op.inputs[3]
    rows, row_splits, positions = op.outputs[1:4]
    grad_inputs, grad_weight_rows, grad_bias_rows = grad_op(
        inputs, weights, rows, row_splits, positions, grad_output, indices
    )
    return [
        grad_inputs,
        tf.IndexedSlices(grad_weight_rows, rows, weights_shape),
        tf.IndexedSlices(grad_bias_rows, rows, biases_shape),
        None,
    ]


# Only `output` is differentiable: the other outputs describe the indices.
@tf.RegisterGradient(op_type(_OP))
def _sparse_gather_matmul_grad(op, grad_output, *unused_grads):
    return _gradients(
        ops.tf_lsh_sparse_gather_matmul_grad,
        op,
        grad_output,
        tf.shape(op.inputs[1]),
        tf.shape(op.inputs[2]),
    )


@tf.RegisterGradient(op_type("Resource" + _OP))
def _resource_sparse_gather_matmul_grad(op, grad_output, *unused_grads):
    return _gradients(
        ops.tf_lsh_resource_sparse_gather_matmul_grad,
        op,
        grad_output,
        resource_variable_ops.variable_shape(op.inputs[1]),
        resource_variable_ops.variable_shape(op.inputs[2]),
    )
