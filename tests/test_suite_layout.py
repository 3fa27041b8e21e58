"""The test suite's own layout: what `bazel test` runs must run tests."""

import pathlib
import re
import sys

import pytest

TESTS = pathlib.Path(__file__).parent
MAIN_GUARD = '\nif __name__ == "__main__":\n'


def _bazel_test_files():
    """The files tests/BUILD's glob makes py_tests of (test_*.py minus its excludes)."""
    build = (TESTS / "BUILD").read_text()
    excluded = set(re.findall(r'"(test_\w+\.py)"', build.split("exclude", 1)[1]))
    return sorted(p.name for p in TESTS.glob("test_*.py") if p.name not in excluded)


def _runs_pytest_as_main(source):
    _, guard, main = source.partition(MAIN_GUARD)
    return bool(guard) and "pytest.main([__file__" in main


def test_every_bazel_test_file_runs_pytest_as_its_main():
    # A py_test runs its file as a program: without this block it runs no test and passes.
    files = _bazel_test_files()
    assert "test_lsh.py" in files and "test_docs.py" not in files
    missing = [name for name in files if not _runs_pytest_as_main((TESTS / name).read_text())]
    assert missing == []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
