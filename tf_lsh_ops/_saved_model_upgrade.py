"""`upgrade_saved_model`: renames the bare op types of SavedModels saved before `TfLsh>`.

TensorFlow finds no op of a type it does not know, and offers no hook to say more than "Op type
not registered": registering the old names again, even only to fail with advice, would take them
back from the process-wide registry and undo the namespace. So old SavedModels are rewritten once.
"""

import collections
import os
import shutil
import sys

from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import constants, fingerprinting_utils

from tf_lsh_ops._loader import op_type

_NAME = "upgrade_saved_model"
_FINGERPRINT_FILE = "fingerprint.pb"  # a hash of saved_model.pb, written by newer TensorFlows

# The op types tf-lsh registered before the namespace. Frozen: an op added since never had a bare
# name, and renaming any other type could capture another plugin's op, or TensorFlow's own.
LEGACY_OP_TYPES = (
    "ActiveSoftmaxCrossEntropy",
    "LshBuildTables",
    "LshQuery",
    "LshRowFingerprints",
    "LshSrpHash",
    "LshSrpHashSparse",
    "LshSrpProjections",
    "LshUpdateTables",
    "LshWtaBins",
    "LshWtaHash",
    "LshWtaHashSparse",
    "MultiLabelBatch",
    "ResourceLshRowFingerprints",
    "ResourceLshSrpHash",
    "ResourceLshWtaHash",
    "ResourceSparseGatherMatmul",
    "ResourceSparseGatherMatmulGrad",
    "ResourceSparseGatherMatmulGradAdam",
    "ResourceSparseInputMatmul",
    "ResourceSparseInputMatmulGrad",
    "ResourceSparseInputMatmulGradAdam",
    "SparseAdamApply",
    "SparseGatherMatmul",
    "SparseGatherMatmulGrad",
    "SparseInputGatherMatmul",
    "SparseInputGatherMatmulGrad",
    "SparseInputMatmul",
    "SparseInputMatmulGrad",
)

# Legacy op type -> the type it is registered as now.
LEGACY_RENAMES = {name: op_type(name) for name in LEGACY_OP_TYPES}


def rename_op_types(saved_model, renames):
    """Renames, in place, the op types `renames` maps in a `SavedModel` proto.

    Covers every node of each MetaGraph's graph and of every function in its library, and the
    op list the MetaGraph carries (`meta_info_def.stripped_op_list`).

    Returns:
      A `collections.Counter`: old op type -> how many nodes had it.
    """
    renamed = collections.Counter()

    def rename(nodes):
        for node in nodes:
            if node.op in renames:
                renamed[node.op] += 1
                node.op = renames[node.op]

    for meta_graph in saved_model.meta_graphs:
        rename(meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            rename(function.node_def)
        for op_def in meta_graph.meta_info_def.stripped_op_list.op:
            op_def.name = renames.get(op_def.name, op_def.name)
    return renamed


def upgrade_saved_model(path, output_path=None):
    """Renames the legacy tf-lsh op types of the SavedModel at `path` to the registered ones.

    SavedModels exported before tf-lsh's ops had the `TfLsh>` namespace (only those with LSH
    inference, `keras_layers.export_saved_model(..., inference="lsh")`, hold tf-lsh ops) fail
    to load with "Op type not registered 'LshQuery'" (or another of `LEGACY_OP_TYPES`).
    This rewrites their `saved_model.pb` once (graph, function library, op list; the
    fingerprint is written anew); variables and assets are untouched.

    Args:
      path: the SavedModel directory.
      output_path: where to write the upgraded SavedModel (a copy of `path`; must not exist).
        `None` rewrites `path` in place.

    Returns:
      A dict: legacy op type -> the number of nodes renamed. Empty when there was nothing to
      rename; then nothing is written (no copy to `output_path` either).

    Raises:
      FileNotFoundError: `path` holds no `saved_model.pb`.
      FileExistsError: `output_path` exists.
    """
    path = os.fspath(path)
    proto_path = os.path.join(path, constants.SAVED_MODEL_FILENAME_PB)
    if not os.path.isfile(proto_path):
        raise FileNotFoundError(
            f"{_NAME}: path={path!r} is not a SavedModel directory (no "
            f"{constants.SAVED_MODEL_FILENAME_PB} in it)"
        )
    if output_path is not None:
        output_path = os.fspath(output_path)
        if os.path.exists(output_path):
            raise FileExistsError(
                f"{_NAME}: output_path={output_path!r} exists; give a new directory, or None "
                "to upgrade path in place"
            )
    saved_model = saved_model_pb2.SavedModel()
    with open(proto_path, "rb") as f:
        saved_model.ParseFromString(f.read())
    renamed = rename_op_types(saved_model, LEGACY_RENAMES)
    if not renamed:
        return {}
    if output_path is not None:
        shutil.copytree(path, output_path)
        path = output_path
    with open(os.path.join(path, constants.SAVED_MODEL_FILENAME_PB), "wb") as f:
        f.write(saved_model.SerializeToString(deterministic=True))
    if os.path.exists(os.path.join(path, _FINGERPRINT_FILE)):
        fingerprinting_utils.write_fingerprint(path)
    return dict(sorted(renamed.items()))


def main(argv=None):
    """`python -m tf_lsh_ops.upgrade_saved_model SRC [DST]`; returns the exit status."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tf_lsh_ops.upgrade_saved_model",
        description=upgrade_saved_model.__doc__.split("\n\n")[0],
    )
    parser.add_argument("src", help="the SavedModel directory")
    parser.add_argument("dst", nargs="?", help="write the upgraded copy here (default: in place)")
    args = parser.parse_args(argv)
    try:
        renamed = upgrade_saved_model(args.src, args.dst)
    except (FileNotFoundError, FileExistsError) as error:
        print(error, file=sys.stderr)
        return 1
    if not renamed:
        print(f"{args.src}: no legacy tf-lsh op types; left unchanged (nothing written)")
        return 0
    print(f"{args.dst or args.src}: renamed")
    for old, count in renamed.items():
        print(f"  {old} -> {LEGACY_RENAMES[old]} ({count} node{'s' if count > 1 else ''})")
    return 0
