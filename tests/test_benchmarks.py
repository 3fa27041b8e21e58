"""Smoke runs of the benchmark scripts' `--quick` modes: each must finish and print its JSON.

The scripts are the project's measurements; one that stops running goes unnoticed until the
next full run (`bench_extreme.py --quick` once refused its first step, unnoticed over many
commits: its active set was smaller than a batch's labels). No timing is asserted. Pytest only: the
`benchmarks/` folder is not a Bazel package (tests/BUILD leaves this file out).
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest

import keras_layers
from keras_layers import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def benchmark_module(name):
    """`benchmarks/<name>.py`, imported as when it runs as a script, its folder on `sys.path`
    (for `_common`; the folder is not a package of the install)."""
    folder = os.path.join(ROOT, "benchmarks")
    if folder not in sys.path:
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    "script",
    ["bench_sparse_gather_matmul.py", "bench_lsh.py", "bench_mnist.py", "bench_matmul_top_k.py"],
)
def test_bench_quick(script, tmp_path):
    args = ("--plots", str(tmp_path)) if script == "bench_mnist.py" else ()
    report = run_quick(script, *args)
    assert report["mode"] == "quick"
    if "all_checks_ok" in report:  # the ops against their TensorFlow compositions
        assert report["all_checks_ok"]


def test_bench_wide_quick(tmp_path):
    bench_wide = benchmark_module("bench_wide")
    report = run_quick("bench_wide.py", "--plots", str(tmp_path))
    runs = {(run["width"], run["kind"]): run for run in report["runs"]}
    kinds = ("dense", "lsh_50", "lsh_5pct", "lsh_50_candidates")
    assert set(runs) == {(w, k) for w in (1024, 2048) for k in kinds}
    for run in runs.values():
        assert "error" not in run, run
        assert run["epoch_s"] > 0 and run["peak_bytes"] > run["baseline_bytes"]
        assert 0 <= run["test_accuracy"] <= 1
    assert runs[(2048, "lsh_50")]["active_units"] == [50, 50]
    assert runs[(2048, "lsh_5pct")]["active_units"] == [102, 102]
    candidates = runs[(2048, "lsh_50_candidates")]
    assert candidates["active_units"] == [50, 50]
    assert candidates["candidate_units"] == [bench_wide.CANDIDATES] * 2
    # The LSH networks' forward pass: selection + 50 active units, far below Dense's.
    lsh, dense = runs[(2048, "lsh_50")], runs[(2048, "dense")]
    assert lsh["forward_multiplications"]["total"] < dense["forward_multiplications"]["total"] / 5
    assert report["ablations"][0]["variant"] == {"backward": None}
    assert report["threads"][0]["speedup"] > 0
    assert report["threads"][0]["copy_bandwidth_speedup"] > 0
    assert os.path.exists(report["plot"])


def test_multiplications_count_the_candidates_and_skip_their_zeros():
    """`lsh_multiplications` with candidates: every candidate is computed and takes a
    gradient; the next layer multiplies only the `active` nonzero inputs but sends all the
    candidates their gradient."""
    counts = benchmark_module("bench_wide").mnist_paper.lsh_multiplications
    model = keras.Sequential(
        [
            keras.Input((30,)),
            keras_layers.LSHDense(100, "relu", active=5, candidates=20, sparse_outputs=True),
            keras_layers.LSHDense(100, "relu", active=5, candidates=20, sparse_outputs=True),
            keras_layers.SparseInputDense(10),
        ]
    )
    got = counts(model, input_dim=30)
    assert got["selection"] == 32 * (30 + 100) + 32 * (5 + 100)
    assert got["active"] == 20 * 30 + 20 * 5
    assert got["output"] == 5 * 10
    assert got["backward"] == 20 * 30 + 20 * (5 + 20) + (5 + 20) * 10


def test_bench_wide_backward_sgd_keeps_no_moments():
    bench_wide = benchmark_module("bench_wide")
    model, _ = bench_wide.build_model("lsh_50", 256, "mnist", 784, 10, variant={"backward": "sgd"})
    first, second = keras_layers.lsh_layers(model)
    assert first.backward_update is None  # dense inputs: the optimizer updates it
    assert second.backward_sgd == bench_wide.SGD_LEARNING_RATE
    # The 64k second layer: 16 GiB of kernel with SGD, 48 GiB with Adam's two moments.
    adam, sgd = (
        bench_wide.memory_estimate_bytes("lsh_50", 65536, 784, 10, backward)
        for backward in ("adam", "sgd")
    )
    assert adam - sgd == 8 * 65536**2
    assert sgd < bench_wide.MEMORY_SHARE * 24 * 2**30 < adam


def test_bench_wide_initialises_for_the_active_inputs_on_the_sparse_input_only():
    bench_wide = benchmark_module("bench_wide")
    for input_name, input_dim, expected in (("sparse", 300, 0.20), ("mnist", 784, 0.0156)):
        model, _ = bench_wide.build_model("lsh_50", 4096, input_name, input_dim, 10)
        first, second = keras_layers.lsh_layers(model)
        assert first.input_active is None
        assert second.input_active == (50 if input_name == "sparse" else None)
        # He over 50 inputs (std sqrt(2 / 50)), or Glorot over the 4k width.
        assert np.std(second.kernel[:64].numpy()) == pytest.approx(expected, rel=0.05)


def test_bench_wide_targets_fall_back_to_dense_at_1k_for_accuracy():
    bench_wide = benchmark_module("bench_wide")

    def run(kind, width, epoch_s, accuracy=None):
        found = {"input": "sparse", "kind": kind, "width": width, "epoch_s": epoch_s}
        found.update(median_step_s=0.1, training_over_state=1.2)
        return found if accuracy is None else {**found, "test_accuracy": accuracy}

    runs = [
        run("dense", 1024, 30.0, 0.988),
        run("dense", 16384, 880.0),  # timed steps: no accuracy
        run("lsh_50", 16384, 6.0, 0.767),
        run("lsh_50_candidates", 16384, 50.0, 0.980),
    ]
    found = bench_wide.targets(runs)["sparse"]
    assert found["lsh_50_candidates_at_16k"]["accuracy_reference_width"] == 1024
    assert found["lsh_50_candidates_at_16k"]["accuracy_gap"] == pytest.approx(0.008)
    assert found["lsh_50_candidates_at_16k"]["met"]
    assert not found["lsh_50_at_16k"]["met"]


def test_bench_active_loss_quick():
    report = run_quick("bench_active_loss.py")
    assert set(report["losses"]) == {"softmax", "decoupled_softmax", "binary"}
    for result in report["losses"].values():
        assert len(result["curve"]) == report["settings"]["epochs"]
        assert result["final"]["P@1"] > 0.3  # the tiny shape's popular label: under 0.1


def test_bench_inference_quick():
    report = run_quick("bench_inference.py")
    modes = report["head_modes"]
    assert set(modes) == {"exact", "lsh", "sketch_16", "sketch_32", "low_rank_16", "low_rank_32"}
    for name, scores in modes.items():
        assert scores["ms_per_example"] > 0 and 0 <= scores["P@5"] <= scores["P@1"] <= 1, name
        if name != "exact":
            assert 0 <= scores["recall_of_exact_top5"] <= 1
    # A higher rank's sketch finds more of the exact top 5 (0.75 against 0.82 when written).
    assert modes["sketch_32"]["recall_of_exact_top5"] > modes["sketch_16"]["recall_of_exact_top5"]


@pytest.mark.parametrize("shape", ["amazon670k", "small"])
def test_profile_step_quick(shape):
    report = run_quick("profile_step.py", "--shape", shape)
    assert report["shape"]["name"] == shape
    assert report["ops_in_step"]["step_wall_ms"] > 0
    if shape == "small":  # the README model: its binary loss is one fused op in the step
        assert "TfLsh>ActiveBinaryCrossEntropy" in report["ops_in_step"]["op_types"]


@pytest.mark.parametrize("name", ["pecos_xr_linear", "omikuji", "napkinxc_plt"])
def test_xmc_library_learns_the_labels(name):
    """Each library bench_extreme.py compares with learns generated data: its P@1, counted here
    from its top-5 ids, far above always predicting the most frequent label."""
    library = benchmark_module("xmc_libraries").LIBRARIES[name]
    if not library.available():
        pytest.skip(
            f"{library.package} is not installed (benchmark-only: "
            "pip install --no-deps -r benchmarks/requirements.txt)"
        )
    train, test = datasets.synthetic_extreme_classification((500, 200, 2000, 400), seed=0)
    top = library.predict_top_k(library.train(train, threads=2), test, 5, threads=2)
    assert top.shape == (len(test), 5)
    assert ((top >= 0) & (top < test.num_labels)).all()
    labels = np.split(test.label_ids, test.label_offsets[1:-1])
    p1 = np.mean([top[i, 0] in labels[i] for i in range(len(test))])
    popular = test.popular_labels_precision(train, 1)
    assert popular < 0.2
    assert p1 >= 0.9, f"{name}: P@1 {p1} (the most frequent label: {popular})"


def test_xmc_library_missing_says_how_to_install():
    xmc_libraries = benchmark_module("xmc_libraries")

    class Missing(xmc_libraries.Library):
        name, package, module = "missing", "no-such-package", "no_such_module_for_tf_lsh"

    assert not Missing().available()
    with pytest.raises(ModuleNotFoundError, match=r"missing: .*no-such-package.*pip install"):
        Missing().load()
