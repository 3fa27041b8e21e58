"""Shared test set-up: Keras on the TensorFlow backend, and where the ops came from."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_report_header(config):
    import tf_lsh_ops

    return f"tf_lsh_ops loaded from {os.path.dirname(tf_lsh_ops.__file__)}"
