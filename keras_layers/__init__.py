"""Keras 3 layers, callbacks, losses and optimizers for hashing-based sparse training."""
