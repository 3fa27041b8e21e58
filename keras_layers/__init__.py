"""Keras 3 layers, callbacks, losses, metrics and optimizers for hashing-based sparse training."""

from keras_layers.lsh_dense import LSHDense
from keras_layers.optimizers import SparseAdam

__all__ = ["LSHDense", "SparseAdam"]
