"""tf-lsh's op namespace, and the upgrade of SavedModels exported before it.

Contracts under test:
  - Every op the library registers is named `TfLsh>...`; none of the bare names it used before
    (`LEGACY_OP_TYPES`) is registered. Error messages name the op without the namespace.
  - A SavedModel with the bare op types (made here from a current LSH-inference export by the
    inverse rename) fails `tf.saved_model.load`; `tf_lsh_ops.upgrade_saved_model` (and
    `python -m tf_lsh_ops.upgrade_saved_model`) renames them, after which it loads and serves
    the model's own predictions.
  - Upgrading a current SavedModel writes nothing; a path that is not a SavedModel, or an
    existing output path, raises an error naming the function and the argument.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import types

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow.python.framework import op_def_registry  # noqa: E402

try:
    import tf_lsh_ops  # noqa: E402
except ModuleNotFoundError:  # Not installed: use the source tree this file belongs to.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tf_lsh_ops  # noqa: E402

import keras_layers  # noqa: E402
from tf_lsh_ops._loader import OP_NAMESPACE, op_type, ops  # noqa: E402
from tf_lsh_ops._saved_model_upgrade import (  # noqa: E402
    LEGACY_OP_TYPES,
    LEGACY_RENAMES,
    main,
    rename_op_types,
)

NUM_FEATURES = 12
NOT_REGISTERED = r"Op type not registered '({})'".format("|".join(LEGACY_OP_TYPES))


def test_every_op_is_in_the_namespace_and_no_legacy_name_is_registered():
    # The generated module names each op's raw wrapper after its type, ">" written "_".
    raw_wrappers = [
        name
        for name in dir(ops)
        if name[:1].isupper() and isinstance(getattr(ops, name), types.FunctionType)
    ]
    assert len(raw_wrappers) >= len(LEGACY_OP_TYPES), raw_wrappers
    prefix = OP_NAMESPACE.replace(">", "_")
    assert all(name.startswith(prefix) for name in raw_wrappers), raw_wrappers
    for name in LEGACY_OP_TYPES:
        assert op_def_registry.get(op_type(name)) is not None, name
        assert op_def_registry.get(name) is None, name


def test_errors_name_the_op_without_the_namespace():
    # One kernel serves LshRowFingerprints and ResourceLshRowFingerprints: it names the op it runs.
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        tf_lsh_ops.row_fingerprints(tf.Variable(tf.zeros([5])))
    message = str(error.value)
    assert "ResourceLshRowFingerprints: weights must have rank 2" in message, message
    assert f"{OP_NAMESPACE}ResourceLshRowFingerprints: weights" not in message, message


def _read(directory):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(directory, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    return saved_model


def _make_legacy(current, legacy):
    """A copy of the SavedModel `current` with tf-lsh's op types as they were before the prefix."""
    shutil.copytree(current, legacy)
    saved_model = _read(current)
    renamed = rename_op_types(saved_model, {new: old for old, new in LEGACY_RENAMES.items()})
    with open(os.path.join(legacy, "saved_model.pb"), "wb") as f:
        f.write(saved_model.SerializeToString())
    return renamed


def _assert_serves(directory, x, expected):
    loaded = tf.saved_model.load(directory)  # kept: its functions need its variables
    np.testing.assert_array_equal(loaded.serve(x).numpy(), expected)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A current LSH-inference export, its legacy twin, an input batch and the model's outputs."""
    directory = tmp_path_factory.mktemp("upgrade")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((NUM_FEATURES,)),
            keras_layers.LSHDense(48, activation="relu", active=6, seed=2),
            keras_layers.LSHDense(20, active=5, num_tables=3, seed=3),  # queries hash tables
        ]
    )
    x = np.random.default_rng(1).standard_normal((7, NUM_FEATURES)).astype(np.float32)
    with keras_layers.inference_mode(model, "lsh"):
        expected = model(x, training=False).numpy()
    with keras_layers.inference_mode(model, "dense"):
        assert not np.array_equal(model(x, training=False).numpy(), expected)  # LSH serves
    current = str(directory / "current")
    keras_layers.export_saved_model(model, current, inference="lsh")
    legacy = str(directory / "legacy")
    renamed_to_legacy = _make_legacy(current, legacy)
    return current, legacy, renamed_to_legacy, x, expected


def test_legacy_saved_model_fails_to_load_and_serves_after_the_upgrade(exported, tmp_path):
    current, legacy, renamed_to_legacy, x, expected = exported
    assert renamed_to_legacy[op_type("LshQuery")] >= 1, renamed_to_legacy
    with pytest.raises(RuntimeError, match=NOT_REGISTERED):
        tf.saved_model.load(legacy)

    upgraded = str(tmp_path / "upgraded")
    renamed = tf_lsh_ops.upgrade_saved_model(legacy, upgraded)
    assert renamed == {
        old: renamed_to_legacy[new]
        for old, new in LEGACY_RENAMES.items()
        if new in renamed_to_legacy
    }
    assert _read(upgraded) == _read(current)
    assert sorted(os.listdir(upgraded)) == sorted(os.listdir(legacy))
    _assert_serves(upgraded, x, expected)


def test_upgrade_in_place_from_the_command_line(exported, tmp_path):
    _, legacy, renamed_to_legacy, x, expected = exported
    in_place = str(tmp_path / "in_place")
    shutil.copytree(legacy, in_place)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(tf_lsh_ops.__file__)))
    child = subprocess.run(
        [sys.executable, "-m", "tf_lsh_ops.upgrade_saved_model", in_place],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, *sys.path])),
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    assert "RuntimeWarning" not in child.stderr, child.stderr[-4000:]
    for old, new in LEGACY_RENAMES.items():
        assert (f"  {old} -> {new} (" in child.stdout) == (new in renamed_to_legacy), child.stdout
    _assert_serves(in_place, x, expected)


def test_upgrade_of_a_current_saved_model_writes_nothing(exported, tmp_path, capsys):
    current = exported[0]
    before = {
        name: open(os.path.join(current, name), "rb").read()
        for name in ("saved_model.pb", "fingerprint.pb")
    }
    output_path = str(tmp_path / "copy")
    assert tf_lsh_ops.upgrade_saved_model(current, output_path) == {}
    assert tf_lsh_ops.upgrade_saved_model(current) == {}
    assert not os.path.exists(output_path)
    for name, contents in before.items():
        assert open(os.path.join(current, name), "rb").read() == contents, name
    assert main([current]) == 0
    assert "no legacy tf-lsh op types; left unchanged" in capsys.readouterr().out


def test_bad_paths_raise_errors_naming_the_argument(exported, tmp_path, capsys):
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"upgrade_saved_model: path='.*missing' is not"):
        tf_lsh_ops.upgrade_saved_model(missing)
    with pytest.raises(FileNotFoundError, match=r"path='.*' is not a SavedModel"):
        tf_lsh_ops.upgrade_saved_model(str(tmp_path))  # a directory, but no saved_model.pb
    legacy = exported[1]
    with pytest.raises(FileExistsError, match=r"upgrade_saved_model: output_path='.*' exists"):
        tf_lsh_ops.upgrade_saved_model(legacy, str(tmp_path))
    assert main([missing]) == 1
    assert "is not a SavedModel directory" in capsys.readouterr().err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
