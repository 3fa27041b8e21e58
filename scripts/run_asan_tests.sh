#!/usr/bin/env bash
# Runs Python tests against an AddressSanitizer + UndefinedBehaviorSanitizer build of the op
# library (docs/reliability.md).
#
#   scripts/run_asan_tests.sh                      # the op tests: gather, lsh, fuzz, threads
#   scripts/run_asan_tests.sh tests/test_lsh.py -k wta   # any pytest arguments
#
# 1. Builds //tf_lsh_ops:_lsh_ops.so with --config=asan in its own Bazel output base
#    ($ASAN_OUTPUT_BASE, default /tmp/tf_lsh_bazel_asan), so the regular build in bazel-bin,
#    which tf_lsh_ops/_lsh_ops.so points to, is left alone.
# 2. Copies the Python package with the instrumented library into a temporary directory
#    ($ASAN_PACKAGE_DIR, default: a fresh mktemp -d) and puts it first on PYTHONPATH.
# 3. Runs pytest with the ASAN runtime (and libstdc++) preloaded (Python itself is not
#    instrumented, and the runtime must come first), leak detection off (Python and TensorFlow keep memory until
#    exit by design), and the first sanitizer report fatal. Any report fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
export PYTHON_BIN_PATH="$ROOT/.venv/bin/python"
OUTPUT_BASE=${ASAN_OUTPUT_BASE:-/tmp/tf_lsh_bazel_asan}

echo "asan: building the instrumented op library in $OUTPUT_BASE" >&2
bazel --output_base="$OUTPUT_BASE" build --config=asan //tf_lsh_ops:_lsh_ops.so
BIN=$(bazel --output_base="$OUTPUT_BASE" info --config=asan bazel-bin 2>/dev/null)
LIBRARY="$BIN/tf_lsh_ops/_lsh_ops.so"

PACKAGE_DIR=${ASAN_PACKAGE_DIR:-$(mktemp -d /tmp/tf_lsh_asan_pkg.XXXXXX)}
rm -rf "$PACKAGE_DIR/tf_lsh_ops" "$PACKAGE_DIR/keras_layers"
mkdir -p "$PACKAGE_DIR/tf_lsh_ops"
cp "$ROOT"/tf_lsh_ops/*.py "$PACKAGE_DIR/tf_lsh_ops/"
cp "$LIBRARY" "$PACKAGE_DIR/tf_lsh_ops/_lsh_ops.so"
cp -r "$ROOT/keras_layers" "$PACKAGE_DIR/keras_layers"  # imports the instrumented tf_lsh_ops
echo "asan: instrumented package in $PACKAGE_DIR" >&2

# libstdc++ too: Python does not link it, and ASAN's __cxa_throw interceptor needs it loaded
# at start-up (else the first C++ exception, e.g. from a pybind11 module, aborts).
LIBASAN=$(gcc -print-file-name=libasan.so)
LIBSTDCXX=$(readlink -f "$(gcc -print-file-name=libstdc++.so)")
export LD_PRELOAD="$LIBASAN $LIBSTDCXX${LD_PRELOAD:+ $LD_PRELOAD}"
# allocator_may_return_null: a huge request fails as it does without ASAN (ResourceExhausted).
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1:detect_odr_violation=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONPATH="$PACKAGE_DIR${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

# Refuse to run against the regular library by mistake (from elsewhere than the checkout:
# `python -` puts the working directory first on sys.path).
(cd "$PACKAGE_DIR" && "$ROOT/.venv/bin/python" - "$PACKAGE_DIR") <<'EOF'
import os, sys
import tf_lsh_ops
expected = os.path.join(sys.argv[1], "tf_lsh_ops", "_lsh_ops.so")
assert os.path.samefile(tf_lsh_ops.LIBRARY_PATH, expected), tf_lsh_ops.LIBRARY_PATH
with open(tf_lsh_ops.LIBRARY_PATH, "rb") as library:
    assert b"__asan_init" in library.read(), "the library is not instrumented"
print(f"asan: tf_lsh_ops loads {tf_lsh_ops.LIBRARY_PATH}", file=sys.stderr)
EOF

if [ "$#" -eq 0 ]; then
  set -- tests/test_sparse_gather_matmul.py tests/test_lsh.py tests/test_fuzz_*.py \
    tests/test_threads.py
fi
# No cache: the run must not write into the checkout.
"$ROOT/.venv/bin/pytest" -q -p no:cacheprovider "$@"
