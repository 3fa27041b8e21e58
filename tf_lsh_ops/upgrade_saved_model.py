"""`python -m tf_lsh_ops.upgrade_saved_model SRC [DST]`: see `tf_lsh_ops.upgrade_saved_model`.

The function lives in `tf_lsh_ops._saved_model_upgrade`, so that `import tf_lsh_ops` does not
import this module (running it with `-m` would then warn that it was already imported).
"""

import sys

from tf_lsh_ops._saved_model_upgrade import main

if __name__ == "__main__":
    sys.exit(main())
