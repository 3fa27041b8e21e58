"""Benchmark of MNIST accuracy against the active fraction: LSHDense vs Dense hidden layers.

The paper's network, 784-1000-1000-10 (`examples/mnist_paper.py`'s `build_lsh_mlp` and
`build_dense_mlp`): two hidden layers of 1,000 ReLU units and a softmax `Dense(10)`. The LSH
network's hidden layers are `LSHDense` (SimHash "srp", K = 6 bits, L tables) computing 1%, 5%,
10%, 25% and 100% of their units per example, trained with `SparseAdam` and
`LSHRebuildCallback(period=50)`; the reference has `keras.layers.Dense` hidden layers and Adam.
Every network trains with `model.fit` for the same epochs (batch 128, learning rate 1e-3) and is
tested on the 10,000 test images:

* `test_accuracy`: exact inference (every unit computed);
* `test_accuracy_lsh_inference`: only the retrieved units computed, as in training;
* with --full, `random`: the same LSHDense layers with active sets drawn at random instead of
  from the tables (`active_rule="threshold"` with `min_count` above L finds nothing, and
  `fill_random` fills the set), a control for what the hashing adds.

`multiplication_fraction` is the forward multiplications per example relative to the dense
network's 1,794,000 (`mnist_paper.lsh_multiplications`: hashing + active units + output).

Usage: python benchmarks/bench_mnist.py [--quick | --full] [--plots DIR] [--threads N]
Prints one JSON document to stdout; progress goes to stderr; a plot goes to --plots.
"""

import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "examples"))
try:
    from benchmarks import _common  # noqa: E402  (first: it finds tf-lsh)
except ModuleNotFoundError:  # Run as a script: the benchmarks folder is on sys.path.
    import _common  # noqa: E402

import json  # noqa: E402

import keras  # noqa: E402
import mnist_paper  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_layers  # noqa: E402

log = _common.make_logger("bench_mnist")

FRACTIONS = (0.01, 0.05, 0.10, 0.25, 1.0)
BATCH = 128
LEARNING_RATE = 1e-3
REBUILD_PERIOD = 50
NUM_HASHES = 6
MODES = {
    "quick": {"train_examples": 4000, "epochs": 1, "num_tables": 10, "random_control": False},
    "full": {"train_examples": None, "epochs": 5, "num_tables": 50, "random_control": True},
}


def run_lsh(fractions_data, fraction, settings, random_sets=False):
    data = fractions_data
    (_, _), (x_test, y_test) = data
    model = mnist_paper.build_lsh_mlp(
        active=fraction, num_tables=settings["num_tables"], num_hashes=NUM_HASHES
    )
    if random_sets:
        for layer in keras_layers.lsh_layers(model):
            layer.active_rule = "threshold"
            layer.min_count = layer.num_tables + 1  # no unit qualifies: all filled at random
    rebuild = keras_layers.LSHRebuildCallback(period=REBUILD_PERIOD)
    result = mnist_paper.fit_and_test(
        model,
        keras_layers.SparseAdam(LEARNING_RATE),
        data,
        settings["epochs"],
        BATCH,
        [rebuild],
        verbose=0,
    )
    result["test_accuracy_lsh_inference"] = mnist_paper.lsh_inference_accuracy(
        model, x_test, y_test
    )
    mults = mnist_paper.lsh_multiplications(model)
    if random_sets:
        mults = {**mults, "total": mults["total"] - mults["hashing"], "hashing": 0}
    result.update(
        active_fraction=fraction,
        active_units=model.layers[0].num_active,
        multiplications_per_example=mults,
        multiplication_fraction=mults["total"] / mnist_paper.dense_multiplications(),
        table_rebuilds=rebuild.rebuilds,
    )
    return result


def plot(report, directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    fig, (ax, ax_mults) = plt.subplots(1, 2, figsize=(12, 4.5))
    lsh = report["lsh"]
    x = [r["active_fraction"] * 100 for r in lsh]
    ax.plot(x, [r["test_accuracy"] for r in lsh], "o-", label="LSHDense, exact inference")
    ax.plot(
        x, [r["test_accuracy_lsh_inference"] for r in lsh], "s-", label="LSHDense, LSH inference"
    )
    if report.get("random"):
        rnd = report["random"]
        ax.plot(
            [r["active_fraction"] * 100 for r in rnd],
            [r["test_accuracy_lsh_inference"] for r in rnd],
            "^--",
            label="random active sets (sparse inference)",
        )
    ax.axhline(report["dense"]["test_accuracy"], color="black", linestyle=":", label="Dense")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set_xlabel("active units per hidden layer (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(
        f"MNIST 784-1000-1000-10, {report['settings']['epochs']} epoch(s), "
        f"{report['settings']['train_examples']:,} images"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax_mults.plot(x, [r["multiplication_fraction"] * 100 for r in lsh], "o-", label="LSHDense")
    ax_mults.axhline(100, color="black", linestyle=":", label="Dense")
    ax_mults.set_xscale("log")
    ax_mults.set_xticks(x, [f"{v:g}" for v in x])
    ax_mults.set_xlabel("active units per hidden layer (%)")
    ax_mults.set_ylabel("multiplications per example (% of dense)")
    ax_mults.set_title(f"SimHash K={NUM_HASHES}, L={report['settings']['num_tables']}")
    ax_mults.grid(alpha=0.3)
    ax_mults.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(directory, "bench_mnist_accuracy_vs_active.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = _common.mode_parser(__doc__.splitlines()[0])
    parser.add_argument("--plots", default="out/plots", help="folder for the PNG plot")
    args = parser.parse_args(argv)
    _common.configure_threads(args.threads)
    tf.get_logger().setLevel("ERROR")
    settings = dict(MODES[args.mode])
    start = time.perf_counter()
    data = mnist_paper.load_data(settings["train_examples"])
    settings["train_examples"] = len(data[0][0])
    report = {
        "benchmark": "mnist",
        "mode": args.mode,
        "machine": _common.machine_info(),
        "settings": {
            **settings,
            "fractions": FRACTIONS,
            "num_hashes": NUM_HASHES,
            "hash_family": "srp",
            "batch_size": BATCH,
            "learning_rate": LEARNING_RATE,
            "rebuild_period": REBUILD_PERIOD,
            "dense_multiplications_per_example": mnist_paper.dense_multiplications(),
        },
    }
    log(f"dense, {settings['epochs']} epoch(s) on {settings['train_examples']:,} images ...")
    dense = mnist_paper.build_dense_mlp()
    report["dense"] = mnist_paper.fit_and_test(
        dense, keras.optimizers.Adam(LEARNING_RATE), data, settings["epochs"], BATCH, verbose=0
    )
    report["dense"]["multiplication_fraction"] = 1.0
    log(f"  accuracy {report['dense']['test_accuracy']:.4f}")
    report["lsh"] = []
    report["random"] = []
    for fraction in FRACTIONS:
        log(f"LSHDense, {fraction:.0%} active ...")
        result = run_lsh(data, fraction, settings)
        report["lsh"].append(result)
        log(
            f"  accuracy {result['test_accuracy']:.4f} (LSH inference "
            f"{result['test_accuracy_lsh_inference']:.4f}), "
            f"{result['multiplication_fraction']:.1%} of the multiplications, "
            f"{result['train_s']:.1f} s"
        )
        if settings["random_control"] and fraction < 1:
            log(f"random active sets, {fraction:.0%} ...")
            result = run_lsh(data, fraction, settings, random_sets=True)
            report["random"].append(result)
            log(f"  accuracy (sparse inference) {result['test_accuracy_lsh_inference']:.4f}")
    report["plot"] = plot(report, args.plots)
    report["total_wall_s"] = time.perf_counter() - start
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
