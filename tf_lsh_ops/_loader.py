"""Loads the tf-lsh op library once, and explains a missing or mismatched build."""

import os
import re

import tensorflow as tf

LIBRARY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lsh_ops.so")
REBUILD_COMMAND = "pip install --no-build-isolation --force-reinstall <your tf-lsh checkout>"
# Every tf-lsh op type starts with this: TensorFlow's op registry is one per process, and a
# namespace keeps another plugin's op of the same name from clashing with ours (tensorflow/addons
# does the same with "Addons>"). The generated Python wrappers are then `ops.tf_lsh_<op>`.
OP_NAMESPACE = "TfLsh>"


def _built_against_tf_version():
    # Read from the file: loading a library built for another TensorFlow may crash the process.
    with open(LIBRARY_PATH, "rb") as library:
        match = re.search(rb"tf-lsh-built-against-tensorflow=([^;]+);", library.read())
    return match.group(1).decode() if match else "an unknown version"


def op_type(name):
    """The registered type of the tf-lsh op `name`: "LshQuery" is "TfLsh>LshQuery"."""
    return OP_NAMESPACE + name


def load_op_library():
    """Returns the module of generated op wrappers, loading the library on first use."""
    if not os.path.exists(LIBRARY_PATH):
        raise ImportError(
            f"tf-lsh: the op library {LIBRARY_PATH} is missing. Build and install it with "
            f"`{REBUILD_COMMAND}` (it needs Bazel and tensorflow-cpu=={tf.__version__})."
        )
    built_for = _built_against_tf_version()
    if built_for != tf.__version__:
        raise ImportError(
            f"tf-lsh: the op library was built against TensorFlow {built_for}, but TensorFlow "
            f"{tf.__version__} is installed. Install tensorflow-cpu=={built_for}, or rebuild "
            f"the ops against this TensorFlow with `{REBUILD_COMMAND}`."
        )
    return tf.load_op_library(LIBRARY_PATH)


ops = load_op_library()
