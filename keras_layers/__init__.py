"""Keras 3 layers, callbacks, losses, metrics and optimizers for hashing-based sparse training."""

from keras_layers.callbacks import LSHRebuildCallback
from keras_layers.losses import (
    ACTIVE_LOSSES,
    active_binary_cross_entropy,
    active_decoupled_softmax_cross_entropy,
    active_softmax_cross_entropy,
    dense_binary_cross_entropy,
    dense_decoupled_softmax_cross_entropy,
    dense_softmax_cross_entropy,
)
from keras_layers.lsh_dense import (
    INFERENCE_MODES,
    LSHDense,
    export_saved_model,
    inference_mode,
    lsh_layers,
    set_inference,
)
from keras_layers.metrics import LSHRecall, PrecisionAtK, UnitCoverage
from keras_layers.models import LSHClassifier
from keras_layers.optimizers import SparseAdam
from keras_layers.sparse_input_dense import SparseInputDense
from keras_layers.unit_selectors import (
    ExactSelector,
    HashTables,
    InferenceSketch,
    LowRankSelector,
    TableConfig,
    UnitSelector,
)

__all__ = [
    "ACTIVE_LOSSES",
    "INFERENCE_MODES",
    "ExactSelector",
    "HashTables",
    "InferenceSketch",
    "LowRankSelector",
    "TableConfig",
    "UnitSelector",
    "LSHClassifier",
    "LSHDense",
    "LSHRebuildCallback",
    "LSHRecall",
    "PrecisionAtK",
    "SparseAdam",
    "SparseInputDense",
    "UnitCoverage",
    "active_binary_cross_entropy",
    "active_decoupled_softmax_cross_entropy",
    "active_softmax_cross_entropy",
    "dense_binary_cross_entropy",
    "dense_decoupled_softmax_cross_entropy",
    "dense_softmax_cross_entropy",
    "export_saved_model",
    "inference_mode",
    "lsh_layers",
    "set_inference",
]
