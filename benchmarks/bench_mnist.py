"""Benchmark of MNIST accuracy against the active fraction: how LSHDense selects its units.

The paper's network, 784-1000-1000-10 (`examples/mnist_paper.py`'s `build_lsh_mlp` and
`build_dense_mlp`): two hidden layers of 1,000 ReLU units (the first hands its active units to
the second as sparse outputs) and a softmax `Dense(10)`. For each active fraction the hidden
layers are `LSHDense` selecting their units

* `low_rank`: the default (`active_rule="auto"`): a rank-32 sketch of each layer, refitted
  from the batch's exact pre-activations every 50 steps;
* `exact`: every unit computed, the top ones kept (k-winners-take-all): what a selection can
  reach at that fraction;
* `tables` (--full: 1% and 5%; --quick: 5%): SimHash tables of the weights (K = 6 bits, L
  tables, the paper's design and this project's former default), with `LSHRebuildCallback`;
* `random`: active sets drawn at random (a table rule that finds nothing, filled at random),
  a control for what the selection adds.

Every network trains with `model.fit` (`SparseAdam`, or Adam for the `Dense` reference) for
the same epochs, batch 128, learning rate 1e-3 and seed, and is tested on the 10,000 test
images in each inference mode (`test_accuracy_by_inference`: `lsh`, the selected units only;
`top_k`; `dense`); `test_accuracy` is the layers' default mode. `history` holds each epoch's
`hidden1_recall` / `hidden2_recall` (the fraction of each example's exact top units the
selection held, measured every 50 steps) and `_coverage`. `multiplications_per_example` is
`mnist_paper.lsh_multiplications` (forward: selection + active units + output; backward and
refreshes apart) and `multiplication_fraction` its forward total over the dense network's
1,794,000. `targets` compares the 1% and 5% runs with `Dense` and exact top-k.

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

BATCH = 128
LEARNING_RATE = 1e-3
REBUILD_PERIOD = 50
NUM_HASHES = 6
MODES = {
    "quick": {
        "train_examples": 4000,
        "epochs": 1,
        "num_tables": 10,
        "fractions": (0.05,),
        "table_fractions": (0.05,),
    },
    "full": {
        "train_examples": None,
        "epochs": 5,
        "num_tables": 50,
        "fractions": (0.01, 0.05, 0.10, 0.25),
        "table_fractions": (0.01, 0.05),
    },
}
SELECTIONS = ("low_rank", "exact", "tables", "random")


def run_lsh(data, fraction, selection, settings):
    """Trains and tests the LSH network with one `selection` (see the module docstring)."""
    (_, _), (x_test, y_test) = data
    rule = {"low_rank": "auto", "exact": "exact", "random": "threshold"}.get(selection, "frequency")
    num_tables = settings["num_tables"]
    model = mnist_paper.build_lsh_mlp(
        active=fraction,
        active_rule=rule,
        num_tables=num_tables,
        num_hashes=NUM_HASHES,
        # "random": no unit is found in more tables than there are: all filled at random.
        min_count=num_tables + 1 if selection == "random" else 1,
    )
    callbacks = []
    if selection in ("tables", "random"):
        callbacks.append(keras_layers.LSHRebuildCallback(period=REBUILD_PERIOD))
    result = mnist_paper.fit_and_test(
        model,
        keras_layers.SparseAdam(LEARNING_RATE),
        data,
        settings["epochs"],
        BATCH,
        callbacks,
        verbose=0,
    )
    result["test_accuracy_by_inference"] = mnist_paper.inference_accuracies(model, x_test, y_test)
    mults = mnist_paper.lsh_multiplications(model)
    if selection == "random":
        mults = {**mults, "total": mults["total"] - mults["selection"], "selection": 0}
    result.update(
        selection=selection,
        active_fraction=fraction,
        active_units=model.layers[0].num_active,
        inference=model.layers[0].inference,
        multiplications_per_example=mults,
        multiplication_fraction=mults["total"] / mnist_paper.dense_multiplications(),
    )
    return result


def targets(report):
    """The issue's targets: accuracy gaps to Dense and to exact top-k at 1% and 5%, and the
    forward multiplications at 5%."""
    dense = report["dense"]["test_accuracy"]
    found = {}
    for run in report["runs"]:
        if run["selection"] != "low_rank":
            continue
        exact = next(
            r
            for r in report["runs"]
            if r["selection"] == "exact" and r["active_fraction"] == run["active_fraction"]
        )
        found[f"{run['active_fraction']:g}"] = {
            "accuracy": run["test_accuracy"],
            "points_below_dense": 100 * (dense - run["test_accuracy"]),
            "points_below_exact_top_k": 100 * (exact["test_accuracy"] - run["test_accuracy"]),
            "multiplication_fraction": run["multiplication_fraction"],
            "last_epoch_recall": {
                name: values[-1] for name, values in run["history"].items() if "recall" in name
            },
        }
    return found


def plot(report, directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    fig, (ax, ax_recall, ax_mults) = plt.subplots(1, 3, figsize=(17, 4.8))
    styles = {
        "low_rank": ("o-", "low-rank sketch (default)"),
        "exact": ("D-", "exact top-k"),
        "tables": ("s--", "SimHash tables"),
        "random": ("^:", "random active sets"),
    }
    fractions = sorted({r["active_fraction"] for r in report["runs"]})
    ticks = [f * 100 for f in fractions]
    for selection, (style, label) in styles.items():
        runs = [r for r in report["runs"] if r["selection"] == selection]
        if runs:
            x = [r["active_fraction"] * 100 for r in runs]
            ax.plot(x, [r["test_accuracy"] for r in runs], style, label=label)
            ax_mults.plot(x, [r["multiplication_fraction"] * 100 for r in runs], style, label=label)
    ax.axhline(report["dense"]["test_accuracy"], color="black", linestyle=":", label="Dense")
    ax.set_ylabel("test accuracy (default inference)")
    ax.set_title(
        f"MNIST 784-1000-1000-10, {report['settings']['epochs']} epoch(s), "
        f"{report['settings']['train_examples']:,} images"
    )
    ax_mults.axhline(100, color="black", linestyle=":", label="Dense")
    ax_mults.set_ylabel("forward multiplications per example (% of dense)")
    ax_mults.set_yscale("log")
    ax_mults.set_title("selection included")
    for axis in (ax, ax_mults):
        axis.set_xscale("log")
        axis.set_xticks(ticks, [f"{v:g}" for v in ticks])
        axis.set_xlabel("active units per hidden layer (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fraction = 0.05 if 0.05 in fractions else fractions[0]
    for run in report["runs"]:
        if run["active_fraction"] != fraction or run["selection"] not in ("low_rank", "tables"):
            continue
        style = "o-" if run["selection"] == "low_rank" else "s--"
        for layer in ("hidden1", "hidden2"):
            values = run["history"][f"{layer}_recall"]
            ax_recall.plot(
                range(1, len(values) + 1),
                values,
                style,
                label=f"{styles[run['selection']][1]}, {layer}",
            )
    ax_recall.set_ylim(0, 1)
    ax_recall.set_xlabel("epoch")
    ax_recall.set_ylabel("recall of the exact top-k units")
    ax_recall.set_title(f"what the selection finds, {fraction:.0%} active")
    ax_recall.grid(alpha=0.3)
    ax_recall.legend(fontsize=8)
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
            "num_hashes": NUM_HASHES,
            "hash_family": "srp",
            "batch_size": BATCH,
            "learning_rate": LEARNING_RATE,
            "rebuild_period": REBUILD_PERIOD,
            "dense_multiplications_per_example": mnist_paper.dense_multiplications(),
            "dense_backward_multiplications_per_example": (
                mnist_paper.dense_backward_multiplications()
            ),
        },
    }
    log(f"dense, {settings['epochs']} epoch(s) on {settings['train_examples']:,} images ...")
    dense = mnist_paper.build_dense_mlp()
    report["dense"] = mnist_paper.fit_and_test(
        dense, keras.optimizers.Adam(LEARNING_RATE), data, settings["epochs"], BATCH, verbose=0
    )
    report["dense"]["multiplication_fraction"] = 1.0
    log(f"  accuracy {report['dense']['test_accuracy']:.4f}, {report['dense']['train_s']:.1f} s")
    report["runs"] = []
    for fraction in settings["fractions"]:
        for selection in SELECTIONS:
            if selection == "tables" and fraction not in settings["table_fractions"]:
                continue
            log(f"LSHDense, {fraction:.0%} active, {selection} ...")
            result = run_lsh(data, fraction, selection, settings)
            report["runs"].append(result)
            recall = [
                f"{values[-1]:.3f}"
                for name, values in result["history"].items()
                if "recall" in name
            ]
            log(
                f"  accuracy {result['test_accuracy']:.4f} ({result['inference']} inference; "
                f"{result['test_accuracy_by_inference']}), recall {', '.join(recall)}, "
                f"{result['multiplication_fraction']:.1%} of the multiplications, "
                f"{result['train_s']:.1f} s"
            )
    report["targets"] = targets(report)
    report["plot"] = plot(report, args.plots)
    report["total_wall_s"] = time.perf_counter() - start
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
