"""Benchmark of wide hidden layers: `Dense` against `LSHDense` as the width W grows.

Two hidden ReLU layers of width W, trained with `model.fit` (batch 128, learning rate 1e-3):

* `dense`: `keras.layers.Dense` x 2, then `Dense(classes, softmax)`; Keras' `Adam`.
* `lsh_50`: `LSHDense(W, relu, active=50)` x 2 (50 units, 5% of 1k, at every width), each
  handing its active units on as a `tf.SparseTensor` (`sparse_outputs=True`), then
  `SparseInputDense(classes, softmax)`, which reads them sparsely; `SparseAdam`.
* `lsh_5pct`: the same with `active=0.05` (5% of W).
* `lsh_50_candidates`: `lsh_50` whose layers select `CANDIDATES` candidates an example, pass the
  50 largest on and send the gradient to all (`LSHDense(candidates=...)`).

on two inputs:

* `mnist`: the 784 pixels of MNIST (50,000 training, 10,000 test images, 10 classes);
* `sparse`: a 20,000-wide bag of words (`keras_layers.datasets.synthetic_extreme_classification`
  with one label per example: ~75 nonzero tf-idf features, 1,000 classes, 40,000 training and
  5,000 test examples).

The LSH layers select with their default low-rank sketch (refitted every
`max(20, W / active)` steps), log their recall of each example's exact top units
(`track_selection`), and the layers that read sparse inputs update their kernels in the
backward pass (`backward_adam`; with `--backward sgd`, `backward_sgd`, which keeps no moments:
the only way a 65,536-wide second layer, 16 GiB of kernel, fits in this machine's memory).

Each run is a fresh subprocess (so that its peak RSS is its own). Reported per run: seconds per
epoch (the median over the epochs after the first, which traces the step; refreshes of the
selection included: they happen inside the steps), the median step, test accuracy and the
history after `--epochs` epochs, peak RSS against the state (weights, optimizer and layer
moments, the selectors' state), and the forward multiplications per example (selection
included). A run whose epoch would take longer than `--epoch-budget` minutes is stopped after
`--timed-steps` timed steps; its epoch time is then their mean times the steps in an epoch
(`"epoch_from_steps": true`) and it has no accuracy. A width whose state cannot fit in this
machine's memory is listed in `skipped` with the bytes it would need.

`ablations`: one change at a time (`ABLATIONS`), at `ablation_width` on MNIST unless they say:
the sketch refitted every 20 steps, the kernels updated by the optimizer's Adam on whole rows,
k-winners boosting (`boost_strength`, also on the bag of words at 1,024 units), the second
layer updated by SGD (`backward_sgd`), grouped and Hogwild (`hogwild=True`).

`--parts` runs some of the three parts only (`runs`, `ablations`, `threads`; default all).

`threads`: the median training step of the LSH runs at `threads_width` on 1 and on 2 threads
(`speedup` = 1 thread / 2 threads), after `threads_warmup_s` seconds of training, for the
default layers and, in `--full`, with the second layer by SGD, grouped and Hogwild; beside
the machine's copy bandwidth on 1 and 2 threads measured in the same run
(`copy_bandwidth_speedup`): the memory-bound parts of a step (the scattered Adam rows) cannot
scale beyond it. `targets` checks the issue's: at 16k, LSHDense >= 10x
faster per epoch than Dense within 1 point of its accuracy; time per step at 50 active units
growing < 2x from 4k to the widest width run; peak RSS within 1.3x of the state.

Usage: python benchmarks/bench_wide.py [--quick | --full] [--widths W ...] [--inputs ...]
       [--kinds ...] [--parts runs ablations threads] [--epochs N] [--backward adam|sgd]
       [--plots DIR]
Prints one JSON document to stdout; progress goes to stderr; a plot goes to --plots.
"""

import argparse
import json
import os
import subprocess
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

import keras  # noqa: E402
import mnist_paper  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_layers  # noqa: E402
from keras_layers import datasets  # noqa: E402
from keras_layers.lsh_dense import BackwardUpdate  # noqa: E402

log = _common.make_logger("bench_wide")

BATCH = 128
LEARNING_RATE = 1e-3
# `backward_sgd`'s step size: plain SGD needs a larger one than Adam's 1e-3 (the kernel's
# gradients are small; Adam divides them by their own scale).
SGD_LEARNING_RATE = 0.05
FIXED_ACTIVE = 50
# `lsh_50_candidates`' candidates an example (the gradient reaches them all; 50 pass on).
CANDIDATES = 400
WARMUP_STEPS = 5
KINDS = ("dense", "lsh_50", "lsh_5pct", "lsh_50_candidates")
PARTS = ("runs", "ablations", "threads")
INPUTS = ("mnist", "sparse")
# The bag-of-words input: (num_features, classes, num_train, num_test), one label each.
SPARSE_SHAPE = (20_000, 1_000, 40_000, 5_000)
MODES = {
    "quick": {
        "widths": (1024, 2048),
        "inputs": ("mnist",),
        "epochs": 1,
        "train_examples": 2_000,
        "timed_steps": 5,
        "epoch_budget_min": 2.0,
        "threads_width": 2048,
        "thread_runs": (("lsh_50", None),),
        "threads_warmup_s": 0.0,
        "ablation_width": 2048,
        "ablations": 1,
    },
    "full": {
        "widths": (1024, 4096, 16384, 32768, 65536),
        "inputs": INPUTS,
        "epochs": 5,
        "train_examples": None,
        "timed_steps": 30,
        "epoch_budget_min": 3.0,
        "threads_width": 16384,
        # The default, then the second layer by SGD, grouped and Hogwild (lock-free and racy).
        "thread_runs": (
            ("lsh_50", None),
            ("lsh_50", {"backward": "sgd"}),
            ("lsh_50", {"backward": "sgd", "hogwild": True}),
            ("lsh_5pct", None),
            ("lsh_50_candidates", None),
        ),
        # Steps are timed after this much training: the first epoch's refits and the
        # background collapse into huge pages slow the early steps (benchmarks/README.md).
        "threads_warmup_s": 20.0,
        "ablation_width": 16384,
        "ablations": None,
    },
}
# Variants of the LSH networks (see `build_model`), as (input, kind, width or None for
# `ablation_width`, variant): the second layer's kernel updated by the optimizer's Adam on whole
# rows (not in the backward pass, per weight); the selector refitted every 20 steps (not
# "auto"); k-winners boosting of the selection; the second layer by SGD, grouped and Hogwild.
ABLATIONS = (
    ("mnist", "lsh_50", None, {"backward": None}),
    ("mnist", "lsh_5pct", None, {"backward": None}),
    ("mnist", "lsh_50", None, {"refresh_period": 20}),
    ("mnist", "lsh_50", None, {"boost_strength": 1.5}),
    ("mnist", "lsh_50", None, {"backward": "sgd"}),
    ("mnist", "lsh_50", None, {"backward": "sgd", "hogwild": True}),
    ("sparse", "lsh_50", 1024, {"boost_strength": 1.5}),
)
# A run is skipped when the memory it needs (`memory_estimate_bytes`) exceeds this share of
# the machine's.
MEMORY_SHARE = 0.8


# ------------------------------------------------------------------------------ one run


def load_data(input_name, train_examples):
    """`(x_train, y_train), (x_test, y_test), classes, fan_in`; x a NumPy array (mnist) or a
    `tf.SparseTensor`-ready CSR triple; `fan_in` the mean nonzeros an example."""
    if input_name == "mnist":
        (x_train, y_train), _, test = datasets.load_mnist()
        if train_examples is not None:
            x_train, y_train = x_train[:train_examples], y_train[:train_examples]
        return (x_train, y_train), test, 10, 784
    train, test = datasets.synthetic_extreme_classification(SPARSE_SHAPE, labels_per_example=1.0)
    if train_examples is not None:
        train = train.take(np.arange(min(train_examples, len(train))))
    fan_in = len(train.feature_ids) / len(train)
    return (train, None), (test, None), SPARSE_SHAPE[1], fan_in


def sparse_dataset(data, batch_size, shuffle):
    """Batches of (`tf.SparseTensor` features, the example's label) from `MultiLabelData`."""

    def single_label(features, labels):
        return features, labels[:, 0]

    return data.dataset(batch_size, shuffle=shuffle).map(single_label)


def build_model(kind, width, input_name, input_dim, classes, seed=0, variant=None):
    """The network of `kind` and its optimizer. LSH networks take `variant` options:
    `refresh_period` (default "auto"), `backward` (default "adam": the layers that read
    sparse inputs update their kernels in the backward pass, by Adam or by "sgd"; None: the
    optimizer does), `hogwild` (default False: with "sgd", Hogwild updates),
    `boost_strength` (default 0), `candidates` (default None: as many as active;
    `lsh_50_candidates` sets `CANDIDATES`), `backward_learning_rate` (`backward="adam"`'s,
    default the optimizer's) and `input_active` (True: the second hidden layer's kernel is
    initialised by He for the first's `active` nonzero outputs; False: by Glorot for its width;
    default: True on the sparse input, False on MNIST, where it cost accuracy)."""
    variant = {
        "refresh_period": "auto",
        "backward": "adam",
        "hogwild": False,
        "boost_strength": 0.0,
        "candidates": None,
        "backward_learning_rate": LEARNING_RATE,
        "input_active": None,
        **(variant or {}),
    }
    keras.utils.set_random_seed(seed)
    sparse = input_name == "sparse"
    if variant["input_active"] is None:
        variant["input_active"] = sparse
    layers = [keras.Input((input_dim,), sparse=sparse)]
    if kind == "dense":
        if sparse:  # Keras' Dense reads a dense batch: the first layer densifies it.
            layers.append(keras_layers.SparseInputDense(width, activation="relu", name="hidden1"))
        else:
            layers.append(keras.layers.Dense(width, activation="relu", name="hidden1"))
        layers.append(keras.layers.Dense(width, activation="relu", name="hidden2"))
        layers.append(keras.layers.Dense(classes, activation="softmax", name="output"))
        return keras.Sequential(layers, name="dense_mlp"), keras.optimizers.Adam(LEARNING_RATE)
    active = 0.05 if kind == "lsh_5pct" else FIXED_ACTIVE
    candidates = CANDIDATES if kind == "lsh_50_candidates" else variant["candidates"]
    for i in range(2):
        sparse_inputs = i > 0 or sparse
        backward = variant["backward"] if sparse_inputs else None
        # He, as for ReLU units, over the first layer's active outputs.
        for_active = i > 0 and variant["input_active"]
        layers.append(
            keras_layers.LSHDense(
                width,
                activation="relu",
                active=active,
                candidates=candidates,
                input_active=active if for_active else None,
                kernel_initializer="he_uniform" if for_active else "glorot_uniform",
                sparse_outputs=True,
                refresh_period=variant["refresh_period"],
                boost_strength=variant["boost_strength"],
                backward_adam=variant["backward_learning_rate"] if backward == "adam" else None,
                backward_sgd=SGD_LEARNING_RATE if backward == "sgd" else None,
                hogwild=variant["hogwild"] and backward == "sgd",
                track_selection=True,
                seed=seed + i,
                name=f"hidden{i + 1}",
            )
        )
    layers.append(keras_layers.SparseInputDense(classes, activation="softmax", name="output"))
    return keras.Sequential(layers, name="lsh_mlp"), keras_layers.SparseAdam(LEARNING_RATE)


def forward_multiplications(model, fan_in):
    """Forward multiplications per example: `{"selection", "active", "output", "total"}`."""
    counts = mnist_paper.lsh_multiplications(model, input_dim=fan_in)
    return {name: counts[name] for name in ("selection", "active", "output", "total")}


def status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


class StepTimer(keras.callbacks.Callback):
    """Times every training step after the first `WARMUP_STEPS` and the first `warmup_s`
    seconds; stops training once `timed_steps` steps show that an epoch would take longer than
    `budget_s`."""

    def __init__(self, steps_per_epoch, timed_steps, budget_s, warmup_s=0.0):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.timed_steps = timed_steps
        self.budget_s = budget_s
        self.warmup_s = warmup_s
        self.first_step = None
        self.step_seconds = []
        self.epoch_seconds = []
        self.seen = 0
        self.stopped_early = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self.epoch_start)

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()
        if self.first_step is None:
            self.first_step = self.start

    def on_train_batch_end(self, batch, logs=None):
        seconds = time.perf_counter() - self.start
        self.seen += 1
        if self.seen <= WARMUP_STEPS or self.start - self.first_step < self.warmup_s:
            return
        self.step_seconds.append(seconds)
        if len(self.step_seconds) == self.timed_steps:
            epoch_s = float(np.median(self.step_seconds)) * self.steps_per_epoch
            if epoch_s > self.budget_s:
                self.stopped_early = True
                self.model.stop_training = True


def run_one(spec):
    """Trains one (input, width, kind) and returns its measurements (run in a subprocess)."""
    _common.configure_threads(spec.get("threads"))
    tf.get_logger().setLevel("ERROR")
    train, test, classes, fan_in = load_data(spec["input"], spec["train_examples"])
    # The runtime and the data, before any model: what training adds is measured from here.
    tf.reduce_sum(tf.ones([8, 8])).numpy()
    baseline = status_bytes("VmRSS")
    sparse = spec["input"] == "sparse"
    input_dim = SPARSE_SHAPE[0] if sparse else 784
    model, optimizer = build_model(
        spec["kind"], spec["width"], spec["input"], input_dim, classes, variant=spec.get("variant")
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if sparse:
        train_data = sparse_dataset(train[0], BATCH, shuffle=True)
        steps_per_epoch = -(-len(train[0]) // BATCH)
        fit_args = dict(x=train_data)
    else:
        steps_per_epoch = -(-len(train[0]) // BATCH)
        fit_args = dict(x=train[0], y=train[1], batch_size=BATCH, shuffle=True)
    epochs = spec["epochs"]
    if spec.get("steps_only"):
        # Times `timed_steps` steps after `warmup_s` seconds of training, then stops.
        epochs, budget_s = 1000, 0.0
    else:
        budget_s = spec["epoch_budget_min"] * 60
    timer = StepTimer(steps_per_epoch, spec["timed_steps"], budget_s, spec.get("warmup_s", 0.0))
    start = time.perf_counter()
    history = model.fit(**fit_args, epochs=epochs, verbose=0, callbacks=[timer])
    train_s = time.perf_counter() - start
    timed_steps = timer.stopped_early or bool(spec.get("steps_only"))
    if timed_steps:  # the mean, so that a refresh among the timed steps counts
        epoch_s = float(np.mean(timer.step_seconds)) * steps_per_epoch
    else:  # the epochs after the first (which traces the step)
        epoch_s = float(np.median(timer.epoch_seconds[1:] or timer.epoch_seconds))
    result = {
        **spec,
        "steps_per_epoch": steps_per_epoch,
        "median_step_s": float(np.median(timer.step_seconds)),
        "epoch_s": epoch_s,
        "epoch_seconds": timer.epoch_seconds,
        "epoch_from_steps": timed_steps,
        "steps_run": timer.seen,
        "train_s": train_s,
    }
    if not result["epoch_from_steps"]:
        if sparse:
            scores = model.evaluate(sparse_dataset(test[0], 1000, False), verbose=0)
        else:
            scores = model.evaluate(test[0], test[1], batch_size=1000, verbose=0)
        result["test_accuracy"] = float(scores[1])
        result["history"] = {
            name: [float(v) for v in values] for name, values in history.history.items()
        }
    state = sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        for v in model.weights + optimizer.variables
    )
    result.update(
        baseline_bytes=baseline,
        peak_bytes=status_bytes("VmHWM"),
        state_bytes=state,
        training_over_state=(status_bytes("VmHWM") - baseline) / state,
        forward_multiplications=(
            dense_multiplications(spec["width"], fan_in, classes)
            if spec["kind"] == "dense"
            else forward_multiplications(model, fan_in)
        ),
    )
    if spec["kind"] != "dense":
        layers = keras_layers.lsh_layers(model)
        result["active_units"] = [layer.num_active for layer in layers]
        result["candidate_units"] = [layer.num_candidates for layer in layers]
    return result


def dense_multiplications(width, fan_in, classes):
    total = fan_in * width + width * width + width * classes
    return {
        "selection": 0,
        "active": fan_in * width + width * width,
        "output": width * classes,
        "total": total,
    }


# ------------------------------------------------------------------------------ the grid


def memory_estimate_bytes(kind, width, input_dim, classes, backward="adam"):
    """What a run needs, before it starts: weights and Adam moments, plus for `Dense` a
    gradient and a temporary of Adam's as large as the weights; an LSH second layer updated
    by `backward_sgd` keeps no moments."""
    weights = 4 * (input_dim * width + width * width + width * classes)
    if kind == "dense":
        return 5 * weights
    return 3 * weights - (8 * width * width if backward == "sgd" else 0)


def run_child(spec):
    """Runs one configuration in a fresh process (its own peak RSS), which finds tf-lsh as
    this one did (`_common`: the installed package, else this checkout)."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--run", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-5:]
        return {**spec, "error": "\n".join(tail)}
    return json.loads(out.stdout.strip().splitlines()[-1])


def targets(runs):
    def find(input_name, kind, width):
        for run in runs:
            if (run["input"], run["kind"], run["width"]) == (input_name, kind, width):
                return run if "error" not in run else None
        return None

    found = {}
    for input_name in sorted({run["input"] for run in runs}):
        dense = find(input_name, "dense", 16384)
        # Dense at 16k is timed, not trained, where an epoch takes too long: the issue then
        # measures the accuracy against Dense at 1k.
        reference = dense if dense and "test_accuracy" in dense else find(input_name, "dense", 1024)
        per_input = {}
        for kind in KINDS[1:]:
            lsh = find(input_name, kind, 16384)
            if dense and lsh:
                entry = {"speedup_per_epoch": dense["epoch_s"] / lsh["epoch_s"]}
                if reference and "test_accuracy" in reference and "test_accuracy" in lsh:
                    entry["accuracy_reference_width"] = reference["width"]
                    entry["accuracy_gap"] = reference["test_accuracy"] - lsh["test_accuracy"]
                    entry["met"] = (
                        entry["speedup_per_epoch"] >= 10 and entry["accuracy_gap"] <= 0.01
                    )
                per_input[f"{kind}_at_16k"] = entry
        widths = sorted(
            run["width"]
            for run in runs
            if run["input"] == input_name and run["kind"] == "lsh_50" and "error" not in run
        )
        if 4096 in widths and widths[-1] > 4096:
            small, wide = find(input_name, "lsh_50", 4096), find(input_name, "lsh_50", widths[-1])
            growth = wide["median_step_s"] / small["median_step_s"]
            per_input["step_growth_50_active"] = {
                "from": 4096,
                "to": widths[-1],
                "growth": growth,
                "met": growth < 2,
            }
        rss = [
            run["training_over_state"]
            for run in runs
            if run["input"] == input_name and "error" not in run
        ]
        if rss:
            per_input["worst_training_over_state"] = max(rss)
            per_input["rss_met"] = max(rss) <= 1.3
        found[input_name] = per_input
    return found


def plot(report, directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    inputs = sorted({run["input"] for run in report["runs"]})
    fig, axes = plt.subplots(2, len(inputs), figsize=(6.5 * len(inputs), 9), squeeze=False)
    backward = report["settings"].get("backward", "adam")
    second = "" if backward == "adam" else f", layer 2 by backward_{backward}"
    styles = {
        "dense": ("s-", "Dense + Adam"),
        "lsh_50": ("o-", f"LSHDense, 50 active{second}"),
        "lsh_5pct": ("^-", f"LSHDense, 5% active{second}"),
        "lsh_50_candidates": ("D-", f"LSHDense, 50 active of {CANDIDATES} candidates{second}"),
    }
    for column, input_name in enumerate(inputs):
        ax_time, ax_acc = axes[0][column], axes[1][column]
        for kind, (style, label) in styles.items():
            runs = sorted(
                (
                    r
                    for r in report["runs"]
                    if r["input"] == input_name and r["kind"] == kind and "error" not in r
                ),
                key=lambda r: r["width"],
            )
            if not runs:
                continue
            (line,) = ax_time.plot(
                [r["width"] for r in runs], [r["epoch_s"] for r in runs], style, label=label
            )
            timed = [r for r in runs if r["epoch_from_steps"]]
            ax_time.plot(
                [r["width"] for r in timed],
                [r["epoch_s"] for r in timed],
                "x",
                color=line.get_color(),
                markersize=12,
            )
            trained = [r for r in runs if "test_accuracy" in r]
            ax_acc.plot(
                [r["width"] for r in trained],
                [r["test_accuracy"] for r in trained],
                style,
                label=label,
            )
        ax_time.set_xscale("log", base=2)
        ax_time.set_yscale("log")
        ax_time.set_xlabel("hidden width W")
        ax_time.set_ylabel("seconds per epoch (x: from timed steps)")
        ax_time.set_title(f"{input_name}: two hidden layers of W units")
        ax_acc.set_xscale("log", base=2)
        ax_acc.set_xlabel("hidden width W")
        ax_acc.set_ylabel(f"test accuracy after {report['settings']['epochs']} epoch(s)")
        for axis in (ax_time, ax_acc):
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(directory, "bench_wide.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = _common.mode_parser(__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", help="hidden widths W")
    parser.add_argument("--inputs", nargs="+", choices=INPUTS)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--epoch-budget", type=float, help="minutes an epoch may take")
    parser.add_argument(
        "--backward",
        choices=BackwardUpdate.RULES,
        default="adam",
        help="how the LSH layers that read sparse inputs update their kernels (runs part)",
    )
    parser.add_argument("--plots", default="out/plots", help="folder for the PNG plot")
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run"
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps(run_one(json.loads(args.run))))
        return None
    settings = dict(MODES[args.mode])
    for name, value in (
        ("widths", args.widths),
        ("inputs", args.inputs),
        ("epochs", args.epochs),
        ("epoch_budget_min", args.epoch_budget),
    ):
        if value is not None:
            settings[name] = tuple(value) if isinstance(value, list) else value
    report = {
        "benchmark": "wide",
        "mode": args.mode,
        "machine": _common.machine_info(),
        "settings": {
            **settings,
            "batch_size": BATCH,
            "learning_rate": LEARNING_RATE,
            "backward": args.backward,
            "sgd_learning_rate": SGD_LEARNING_RATE,
            "fixed_active": FIXED_ACTIVE,
            "sparse_shape": SPARSE_SHAPE,
        },
        "runs": [],
        "skipped": [],
    }
    memory = _common.meminfo_bytes("MemTotal") or 0
    start = time.perf_counter()
    runs_inputs = settings["inputs"] if "runs" in args.parts else ()
    for input_name in runs_inputs:
        input_dim, classes = (784, 10) if input_name == "mnist" else SPARSE_SHAPE[:2]
        for width in settings["widths"]:
            for kind in args.kinds:
                need = memory_estimate_bytes(kind, width, input_dim, classes, args.backward)
                if need > MEMORY_SHARE * memory:
                    report["skipped"].append(
                        {
                            "input": input_name,
                            "width": width,
                            "kind": kind,
                            "needs_bytes": need,
                            "memory_bytes": memory,
                            "reason": "weights, Adam moments (and Dense's gradient) exceed "
                            f"{MEMORY_SHARE:.0%} of this machine's memory",
                        }
                    )
                    log(f"{input_name} W={width} {kind}: skipped, needs {need / 2**30:.1f} GiB")
                    continue
                spec = {
                    "input": input_name,
                    "width": width,
                    "kind": kind,
                    "epochs": settings["epochs"],
                    "train_examples": settings["train_examples"],
                    "timed_steps": settings["timed_steps"],
                    "epoch_budget_min": settings["epoch_budget_min"],
                }
                if kind != "dense" and args.backward != "adam":
                    spec["variant"] = {"backward": args.backward}
                log(f"{input_name} W={width} {kind} ...")
                result = run_child(spec)
                report["runs"].append(result)
                log("  " + summary(result))
    # One change at a time against the runs above, at one width.
    report["ablations"] = []
    ablations = ABLATIONS[: settings["ablations"]] if "ablations" in args.parts else ()
    for input_name, kind, width, variant in ablations:
        if kind not in args.kinds:
            continue
        spec = {
            "input": input_name,
            "width": width or settings["ablation_width"],
            "kind": kind,
            "variant": variant,
            "epochs": settings["epochs"],
            "train_examples": settings["train_examples"],
            "timed_steps": settings["timed_steps"],
            "epoch_budget_min": settings["epoch_budget_min"],
        }
        log(f"ablation: {input_name} W={spec['width']} {kind} {variant} ...")
        report["ablations"].append(run_child(spec))
        log("  " + summary(report["ablations"][-1]))
    report["threads"] = []
    thread_inputs = settings["inputs"][:1] if "threads" in args.parts else ()
    if thread_inputs:
        copy_gb_s = {threads: _common.copy_bandwidth_gb_s(threads=threads) for threads in (1, 2)}
    for input_name in thread_inputs:
        for kind, variant in settings["thread_runs"]:
            if kind not in args.kinds:
                continue
            timings = {}
            for threads in (1, 2):
                spec = {
                    "input": input_name,
                    "width": settings["threads_width"],
                    "kind": kind,
                    "variant": variant,
                    "epochs": 1,
                    "train_examples": settings["train_examples"],
                    "timed_steps": settings["timed_steps"],
                    "steps_only": True,
                    "warmup_s": settings["threads_warmup_s"],
                    "threads": threads,
                }
                label = f"{kind} {variant}" if variant else kind
                log(f"threads: {input_name} W={spec['width']} {label}, {threads} thread(s) ...")
                timings[threads] = run_child(spec).get("median_step_s")
            report["threads"].append(
                {
                    "input": input_name,
                    "width": settings["threads_width"],
                    "kind": kind,
                    "variant": variant,
                    "step_s_1_thread": timings[1],
                    "step_s_2_threads": timings[2],
                    "speedup": timings[1] / timings[2] if timings[1] and timings[2] else None,
                    "copy_gb_s_1_thread": copy_gb_s[1],
                    "copy_gb_s_2_threads": copy_gb_s[2],
                    "copy_bandwidth_speedup": copy_gb_s[2] / copy_gb_s[1],
                }
            )
            log(f"  speedup {report['threads'][-1]['speedup']}")
    report["targets"] = targets(report["runs"])
    report["wall_s"] = time.perf_counter() - start
    if args.plots and report["runs"]:
        report["plot"] = plot(report, args.plots)
    print(json.dumps(report, indent=1))
    return report


def summary(run):
    if "error" in run:
        return f"failed: {run['error']}"
    text = f"{run['median_step_s'] * 1e3:.1f} ms/step, {run['epoch_s']:.1f} s/epoch"
    if run["epoch_from_steps"]:
        text += " (from timed steps)"
    if "test_accuracy" in run:
        text += f", accuracy {run['test_accuracy']:.4f}"
    return (
        text
        + f", peak {run['peak_bytes'] / 2**30:.2f} GiB, x{run['training_over_state']:.2f} of state"
    )


if __name__ == "__main__":
    main()
