"""Smoke runs of the benchmark scripts' `--quick` modes: each must finish and print its JSON.

The scripts are the project's measurements; one that stops running goes unnoticed until the
next full run (`bench_extreme.py --quick` once refused its first step, unnoticed over many
commits: its active set was smaller than a batch's labels). No timing is asserted. Pytest only: the
`benchmarks/` folder is not a Bazel package (tests/BUILD leaves this file out).
"""

import json
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(script, *args):
    """Runs `benchmarks/<script> --quick`; returns its JSON report."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tempfile.gettempdir(),  # the installed package, not the checkout, as in CI
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_bench_extreme_quick(tmp_path):
    report = run_quick("bench_extreme.py", "--plots", str(tmp_path))
    for shape in ("small", "large"):
        methods = report[shape]["methods"]
        assert set(methods) == {"full_softmax", "sampled_20pct", "sampled_3000", "tf_lsh"}
        lsh = methods["tf_lsh"]
        assert lsh["steps"] > 0 and lsh["lsh"]["rehash"] == "changed"
        assert 0 <= lsh["final"]["P@1"] <= 1
    assert os.path.exists(report["plot"])


@pytest.mark.parametrize(
    "script", ["bench_sparse_gather_matmul.py", "bench_lsh.py", "bench_mnist.py"]
)
def test_bench_quick(script, tmp_path):
    args = ("--plots", str(tmp_path)) if script == "bench_mnist.py" else ()
    report = run_quick(script, *args)
    assert report["mode"] == "quick"
    if "all_checks_ok" in report:  # the op against TensorFlow's gather + matmul
        assert report["all_checks_ok"]


def test_profile_step_quick():
    report = run_quick("profile_step.py")
    assert report["ops_in_step"]["step_wall_ms"] > 0
