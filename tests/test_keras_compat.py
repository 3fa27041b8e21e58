"""The supported Keras versions are stated once (keras_layers/_keras_compat.py's SUPPORTED_KERAS)
and the packaging files agree with it. Reads setup.py and requirements.txt, which are not in a
Bazel package: pytest only (tests/BUILD leaves this file out)."""

import os
import re
import runpy
import sys

import setuptools

try:
    import keras_layers  # noqa: F401
except ModuleNotFoundError:  # Not installed: use the source tree this file belongs to.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_layers import _keras_compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_setup_requires_the_supported_keras(monkeypatch):
    arguments = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: arguments.update(kwargs))
    runpy.run_path(os.path.join(ROOT, "setup.py"))
    low, high = _keras_compat.SUPPORTED_KERAS
    keras = [r for r in arguments["install_requires"] if r.startswith("keras")]
    assert keras == [f"keras>={low},<{high}"]


def test_requirements_pin_a_supported_keras():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pins = re.findall(r"^keras==([\w.]+)", f.read(), re.MULTILINE)
    assert len(pins) == 1, pins
    low, high = _keras_compat.SUPPORTED_KERAS
    assert (
        _keras_compat._version_tuple(low)
        <= _keras_compat._version_tuple(pins[0])
        < _keras_compat._version_tuple(high)
    ), (pins[0], low, high)
    _keras_compat.check_keras_version(pins[0])  # the check agrees
