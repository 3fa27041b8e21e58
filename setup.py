"""Builds the op library with Bazel and packages it with the Python code.

    pip install --no-build-isolation .   # builds against the TensorFlow already installed
    pip wheel --no-build-isolation .     # a cp311 linux_x86_64 wheel

Bazel finds TensorFlow through the interpreter in PYTHON_BIN_PATH (default: this interpreter).
"""

import ast
import os
import shutil
import subprocess
import sys

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
LIBRARY = os.path.join("tf_lsh_ops", "_lsh_ops.so")
TENSORFLOW = "tensorflow-cpu==2.21.0"


def keras_requirement():
    """ "keras>=low,<high" from keras_layers/_keras_compat.py's SUPPORTED_KERAS, the one statement
    of the Keras versions tf-lsh supports (read, not imported: Keras may not be installed yet)."""
    with open(os.path.join(ROOT, "keras_layers", "_keras_compat.py")) as f:
        module = ast.parse(f.read())
    for node in module.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            "SUPPORTED_KERAS"
        ]:
            low, high = ast.literal_eval(node.value)
            return f"keras>={low},<{high}"
    raise RuntimeError("tf-lsh: SUPPORTED_KERAS not found in keras_layers/_keras_compat.py")


class BuildWithBazel(build_py):
    """Runs `bazel build` for the op library and copies it into the package."""

    def run(self):
        super().run()
        env = dict(os.environ)
        env.setdefault("PYTHON_BIN_PATH", sys.executable)
        try:
            subprocess.check_call(["bazel", "build", "//tf_lsh_ops:_lsh_ops.so"], cwd=ROOT, env=env)
        except FileNotFoundError:
            sys.exit("tf-lsh: Bazel is needed to build the ops: apt-get install -y bazel-bootstrap")
        built = os.path.join(ROOT, "bazel-bin", LIBRARY)
        target = os.path.join(self.build_lib, LIBRARY)
        if os.path.lexists(target):
            os.remove(target)  # may be a development symlink copied by build_py
        shutil.copyfile(built, target)


class BinaryDistribution(Distribution):
    """The package holds a compiled library, so wheels are tagged cp311-linux_x86_64."""

    def has_ext_modules(self):
        return True


setup(
    name="tf-lsh",
    version="0.1.0",
    description="Hashing-based sparse training for TensorFlow and Keras (LSH ops and layers)",
    long_description=open(os.path.join(ROOT, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(
        include=["tf_lsh_ops", "tf_lsh_ops.*", "keras_layers", "keras_layers.*"]
    ),
    install_requires=[TENSORFLOW, keras_requirement()],
    cmdclass={"build_py": BuildWithBazel},
    distclass=BinaryDistribution,
    zip_safe=False,
)
