"""TensorFlow ops for hashing-based sparse training (tf-lsh).

`import tf_lsh_ops` loads the compiled op library once; it must be imported before loading a
SavedModel that uses these ops.
"""

from tf_lsh_ops._loader import LIBRARY_PATH
from tf_lsh_ops.sparse_gather_matmul import sparse_gather_matmul

__all__ = ["LIBRARY_PATH", "sparse_gather_matmul"]
