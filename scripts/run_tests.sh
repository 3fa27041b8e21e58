#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: lint, `bazel test //...` (C++ tests and
# the Python tests on the source tree) and `pytest tests/` (on the installed package).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PYTHON_BIN_PATH="$PWD/.venv/bin/python"

# The libraries bench_extreme.py compares with (benchmark-only; tests/test_benchmarks.py).
.venv/bin/pip install -q --disable-pip-version-check --no-deps -r benchmarks/requirements.txt

.venv/bin/ruff check .
.venv/bin/ruff format --check .
bazel test //... 
# From the tests folder, so that `import tf_lsh_ops` finds the installed package.
.venv/bin/pytest -q tests/ -p no:cacheprovider
