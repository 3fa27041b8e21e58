"""Argument checks shared by the op wrappers: errors name the op, the argument and the shape."""

import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops


def require_dtype(op_name, arg_name, tensor, dtype):
    """Raises InvalidArgumentError unless `tensor` has `dtype`."""
    if tensor.dtype != dtype:
        raise tf.errors.InvalidArgumentError(
            None,
            None,
            f"{op_name}: {arg_name} must be {dtype.name}, got {tensor.dtype.name} "
            f"with shape {tensor.shape}",
        )
    return tensor


def as_tensor(op_name, arg_name, value, dtype):
    """Converts `value` to a tensor (Python numbers take `dtype`) and checks its dtype."""
    if not isinstance(value, (tf.Tensor, tf.Variable)) and not hasattr(value, "dtype"):
        value = tf.convert_to_tensor(value, dtype=dtype)
    else:
        value = tf.convert_to_tensor(value)
    return require_dtype(op_name, arg_name, value, dtype)


def as_resource_variable(value):
    """The tf.Variable behind a tf.Variable or a Keras 3 variable, or None for a tensor."""
    value = getattr(value, "value", value) if not isinstance(value, tf.Variable) else value
    return value if isinstance(value, resource_variable_ops.BaseResourceVariable) else None


def variable_handle(op_name, arg_name, value):
    """The resource handle of a variable argument that an op updates in place: a tf.Variable
    (also a tf.distribute replica's, whose handle is its local copy) or a Keras variable."""
    variable = value if isinstance(value, tf.Variable) else getattr(value, "value", None)
    if not isinstance(variable, tf.Variable):
        raise tf.errors.InvalidArgumentError(
            None,
            None,
            f"{op_name}: {arg_name} must be a variable (tf.Variable or Keras), updated in "
            f"place; got {type(value).__name__} with shape {getattr(value, 'shape', None)}",
        )
    return variable.handle


def variable_handles(op_name, **variables):
    """The handles of an op's variable arguments (`name=variable`, in the op's order)."""
    return [variable_handle(op_name, name, value) for name, value in variables.items()]
