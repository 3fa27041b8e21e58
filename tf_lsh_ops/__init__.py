"""TensorFlow ops for hashing-based sparse training (tf-lsh).

`import tf_lsh_ops` loads the compiled op library once; import it before loading a SavedModel
that uses these ops. Their types are namespaced (`TfLsh>LshQuery`); `upgrade_saved_model`
renames the bare ones of SavedModels exported before.
"""

from tf_lsh_ops._loader import LIBRARY_PATH
from tf_lsh_ops._saved_model_upgrade import upgrade_saved_model
from tf_lsh_ops.active_losses import active_binary_cross_entropy, active_softmax_cross_entropy
from tf_lsh_ops.assign_rows import assign_rows
from tf_lsh_ops.lsh import (
    HASH_FAMILIES,
    OVERFLOW_POLICIES,
    QUERY_RULES,
    bucket_bits,
    build_tables,
    hash_params,
    lsh_hash,
    query_tables,
    row_fingerprints,
    update_tables,
)
from tf_lsh_ops.matmul_top_k import matmul_top_k
from tf_lsh_ops.multi_label_batch import multi_label_batch
from tf_lsh_ops.sparse_adam import sparse_adam_apply, sparse_rowwise_rmsprop_apply
from tf_lsh_ops.sparse_gather_matmul import (
    sparse_gather_matmul,
    sparse_gather_matmul_adam,
    sparse_gather_matmul_grouped,
    sparse_input_gather_matmul,
    sparse_input_gather_matmul_lazy_adam,
    sparse_input_gather_matmul_lazy_sgd,
    sparse_input_matmul,
    sparse_input_matmul_adam,
    sparse_input_matmul_rowwise_rmsprop,
    sparse_input_products,
)

__all__ = [
    "HASH_FAMILIES",
    "LIBRARY_PATH",
    "active_binary_cross_entropy",
    "active_softmax_cross_entropy",
    "assign_rows",
    "OVERFLOW_POLICIES",
    "QUERY_RULES",
    "bucket_bits",
    "build_tables",
    "hash_params",
    "lsh_hash",
    "matmul_top_k",
    "multi_label_batch",
    "query_tables",
    "row_fingerprints",
    "sparse_adam_apply",
    "sparse_gather_matmul",
    "sparse_gather_matmul_adam",
    "sparse_gather_matmul_grouped",
    "sparse_input_gather_matmul",
    "sparse_input_gather_matmul_lazy_adam",
    "sparse_input_gather_matmul_lazy_sgd",
    "sparse_input_matmul",
    "sparse_input_matmul_adam",
    "sparse_input_matmul_rowwise_rmsprop",
    "sparse_input_products",
    "sparse_rowwise_rmsprop_apply",
    "update_tables",
    "upgrade_saved_model",
]
