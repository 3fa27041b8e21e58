"""Benchmark of extreme-classification training: full softmax vs sampled softmax vs tf-lsh.

All methods share one network, SparseInputDense(128, relu) over a bag of words and an output
layer over every label, the same data (`keras_layers.datasets.synthetic_extreme_classification`,
seed 0), batch size 128, learning rate 1e-3, the same cores and `model.fit`:

* `full_softmax` (a): a `keras.layers.Dense` output, softmax over all labels, Keras Adam
  (`examples/extreme_classification.py`'s `build_dense_model` and `full_softmax_loss`).
* `sampled_20pct` and `sampled_3000` (b): output weights `[num_labels, 128]` trained with
  `tf.nn.sampled_softmax_loss` (20% of the labels, or 3,000, sampled per batch), Keras Adam.
  TensorFlow's sampled softmax takes the same number of true labels for every example: we use
  `num_true = max_labels` (16 on these data) and replace each example's -1 padding by its first
  label (so that label weighs more in the target of examples with fewer labels). Label ids carry
  no frequency order here, so negatives come from `tf.random.uniform_candidate_sampler`
  (`unique=True`) instead of the default log-uniform (Zipf-over-ids) sampler;
  `remove_accidental_hits=True`. Its weight gradient is a `tf.IndexedSlices`, which Keras 3's
  Adam applies as a dense update of every row.
* `tf_lsh` (c): `LSHClassifier` with an `LSHDense` output (`build_lsh_model`: SimHash, 16
  tables), `SparseAdam`, `LSHRebuildCallback(period=50, schedule="exponential", growth=1.2)` as
  in the example; one active set of `active` labels per batch (the batch's labels first, then
  the units its buckets share most), as the example trains.
* optional `tf_lsh_per_example` (c'): the same with one active set per example (SLIDE's way):
  a step then touches up to batch x active output rows.
* optional (`--methods ... sampled_3000_sparse_adam`): (b) with 3,000 samples and `SparseAdam`,
  separating the optimizer's share of the difference from the hashing's.

Two data shapes:

* `small` (the smaller variant; `tiny` with --quick): several epochs each; P@1/3/5 after the
  same number of epochs and P@1 against training wall time (evaluated `evals_per_epoch` times
  per epoch), with measured seconds per epoch.
* `large`: the Amazon-670K shape (135,909 features, 670,091 labels, 100k training examples;
  `amazon-670k-100k` with --quick). An epoch of the full softmax takes about half an hour here,
  so each method trains for the same training-time budget (at most one epoch): seconds per step
  (median, steps after the first 3) and projected seconds per epoch (782 steps x median step,
  plus for tf-lsh the table events the schedule makes in an epoch, refreshes and every third a
  full rebuild, x their mean time, one being timed after training if the run had none), and P@1
  against wall time on a test subset.

"At equal wall time" compares P@1 at the shorter of two methods' total training times, each
curve read by linear interpolation between its evaluations (the first at time 0, untrained).

Evaluation is always exact: every label is scored (`LSHDense` with `inference="dense"`), top-5
taken, P@k by `keras_layers.PrecisionAtK`; it pauses the training clock. The popular-labels
baseline (`MultiLabelData.popular_labels_precision`) is reported beside P@k. Models are
compiled without training metrics, so steps time training only; the first step (tracing) and
the table rebuilds count in the wall time.

Multiplications per step (batch B, hidden H = 128, n features per example, N labels): the body
costs 2 B n H (forward, weight gradient); the full softmax 3 B H N (forward, weight and input
gradients); sampled softmax 3 B H (S + num_true); tf-lsh 3 B H k for its k active units plus
B H L K to hash the queries (SimHash, L tables of K bits), and, amortised per step, U (H + 1) L K
per table event, U the units it re-hashed on average (a refresh: those that changed since the
last event; a rebuild: all N). Optimizer work is reported apart, as output rows updated per
step (dense Adam: all N; SparseAdam: the distinct active rows of the batch, measured).

Peak memory: with --full every (shape, method) runs in its own subprocess, one after another,
and reports its `ru_maxrss` (peak RSS), with the peak after generating the data
(`rss_after_data_bytes`) so the model's share is the difference. With --quick everything runs
in this process (faster) and peaks are cumulative (`rss_isolated: false`).

Other processes may share the CPUs, so timings are noisy; the load average is reported.

Usage: python benchmarks/bench_extreme.py [--quick | --full] [--plots DIR] [--threads N]
Prints one JSON document to stdout; progress goes to stderr; a P@1-vs-time plot goes to --plots.
"""

import argparse
import gc
import json
import math
import os
import resource
import statistics
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

import extreme_classification as example  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_layers  # noqa: E402
from keras_layers import datasets  # noqa: E402

log = _common.make_logger("bench_extreme")

BATCH = 128
LEARNING_RATE = 1e-3
EVAL_BATCH = 256
TOP_K = (1, 3, 5)
WARMUP_STEPS = 3
SEED = 0
REBUILD = {
    "period": 50,
    "schedule": "exponential",
    "growth": 1.2,
    "rehash": "changed",
    "full_rebuild_every": 3,
}
SAMPLED_FRACTION = 0.2
SAMPLED_FIXED = 3000
DEFAULT_METHODS = ("full_softmax", "sampled_20pct", "sampled_3000", "tf_lsh")
LSH_METHODS = ("tf_lsh", "tf_lsh_per_example")
ALL_METHODS = DEFAULT_METHODS + ("tf_lsh_per_example", "sampled_3000_sparse_adam")
LABELS = {
    "full_softmax": "(a) Dense, full softmax + Adam",
    "sampled_20pct": "(b) sampled softmax, 20% + Adam",
    "sampled_3000": "(b) sampled softmax, 3000 + Adam",
    "sampled_3000_sparse_adam": "(b') sampled softmax, 3000 + SparseAdam",
    "tf_lsh": "(c) tf-lsh: LSHDense + SparseAdam",
    "tf_lsh_per_example": "(c') tf-lsh, one active set per example",
}

MODES = {
    "quick": {
        "isolate": False,
        # One active set per batch holds its labels: up to ~450 distinct of the 1,000 here.
        "small": {"shape": "tiny", "epochs": 4, "evals_per_epoch": 1, "active": 512},
        "large": {
            "shape": "amazon-670k-100k",
            "budget_s": 2.0,
            "min_steps": 6,
            "max_steps": 10,
            "evals": 1,
            "test_examples": 256,
            "active": 3000,
        },
    },
    "full": {
        "isolate": True,
        "small": {"shape": "small", "epochs": 4, "evals_per_epoch": 2, "active": 1000},
        "large": {
            "shape": "amazon-670k",
            "budget_s": 100.0,
            "min_steps": 10,
            "max_steps": None,  # one epoch
            "evals": 4,
            "test_examples": 2000,
            "active": 3000,
        },
    },
}
TARGETS = {"speedup_c_over_a": 20.0, "p1_ratio_c_over_a": 0.97, "real_full_softmax_p1": 0.3}


# ----------------------------------------------------------------------------- models


class SampledSoftmaxClassifier(keras.Model):
    """The same network trained with `tf.nn.sampled_softmax_loss`; `call` gives exact logits."""

    def __init__(self, num_labels, num_sampled, num_true, **kwargs):
        super().__init__(**kwargs)
        self.body = keras_layers.SparseInputDense(example.HIDDEN, activation="relu", name="hidden")
        self.num_labels = num_labels
        self.num_sampled = num_sampled
        self.num_true = num_true

    def build(self, input_shape):
        self.body.build(input_shape)
        # [num_labels, hidden]: row j is label j's weights, as sampled_softmax_loss wants.
        self.kernel = self.add_weight(
            name="output_kernel",
            shape=(self.num_labels, example.HIDDEN),
            initializer="glorot_uniform",
        )
        self.bias = self.add_weight(
            name="output_bias", shape=(self.num_labels,), initializer="zeros"
        )
        self.built = True

    def call(self, inputs, training=None):
        hidden = self.body(inputs, training=training)
        return tf.matmul(hidden, self.kernel, transpose_b=True) + self.bias

    def true_classes(self, labels):
        """int64 `[batch, num_true]`: the labels, -1 padding replaced by the first label."""
        labels = tf.cast(labels, tf.int64)
        labels = labels[:, : self.num_true]
        pad = self.num_true - tf.shape(labels)[1]
        labels = tf.pad(labels, [[0, 0], [0, pad]], constant_values=-1)
        return tf.where(labels >= 0, labels, tf.maximum(labels[:, :1], 0))

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        true = self.true_classes(y)
        with tf.GradientTape() as tape:
            hidden = self.body(x, training=True)
            sampled = tf.random.uniform_candidate_sampler(
                true, self.num_true, self.num_sampled, unique=True, range_max=self.num_labels
            )
            loss = tf.reduce_mean(
                tf.nn.sampled_softmax_loss(
                    self.kernel.value,
                    self.bias.value,
                    true,
                    hidden,
                    self.num_sampled,
                    self.num_labels,
                    num_true=self.num_true,
                    sampled_values=sampled,
                    remove_accidental_hits=True,
                )
            )
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(true)[0])
        return {"loss": self._loss_tracker.result()}


def build_model(method, data, active, num_tables):
    """A compiled model for `method`, and its callbacks."""
    num_features, num_labels = data.num_features, data.num_labels
    if method == "full_softmax":
        model = example.build_dense_model(num_features, num_labels, seed=SEED)
        model.compile(
            optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=example.full_softmax_loss
        )
        return model, []
    if method in LSH_METHODS:
        model = example.build_lsh_model(
            num_features,
            num_labels,
            active,
            num_tables=num_tables,
            batch_wide=method == "tf_lsh",
            seed=SEED,
        )
        model.compile(optimizer=keras_layers.SparseAdam(LEARNING_RATE))
        return model, [keras_layers.LSHRebuildCallback(**REBUILD)]
    keras.utils.set_random_seed(SEED)
    model = SampledSoftmaxClassifier(num_labels, num_sampled(method, num_labels), data.max_labels)
    model.build((None, num_features))
    optimizer = (
        keras_layers.SparseAdam(LEARNING_RATE)
        if method.endswith("sparse_adam")
        else keras.optimizers.Adam(LEARNING_RATE)
    )
    model.compile(optimizer=optimizer)
    return model, []


def num_sampled(method, num_labels):
    if method == "sampled_20pct":
        return max(1, round(SAMPLED_FRACTION * num_labels))
    return min(SAMPLED_FIXED, num_labels - 1)


# ------------------------------------------------------------------------ evaluation


def test_batches(test, count=None):
    if count is not None:
        test = test.take(np.arange(min(count, len(test))))
    return [(x, y.numpy()) for x, y in test.dataset(EVAL_BATCH)]


def precision_at_k(model, batches):
    """Exact P@1/3/5 over `batches` (every label scored)."""

    @tf.function(reduce_retracing=True)
    def top5(x):
        return tf.math.top_k(model(x, training=False), max(TOP_K)).indices

    metrics = {k: keras_layers.PrecisionAtK(k) for k in TOP_K}
    for x, y in batches:
        top = top5(x)
        for metric in metrics.values():
            metric.update_state(y, top)
    return {f"P@{k}": float(metric.result()) for k, metric in metrics.items()}


class TrainingClock(keras.callbacks.Callback):
    """Times each step, evaluates at chosen steps or training times, stops at a budget.

    Evaluation pauses the clock: `curve` holds (training seconds, step, P@k) points.
    """

    def __init__(
        self, evaluate, eval_steps=(), budget_s=None, evals=0, min_steps=0, max_steps=None
    ):
        super().__init__()
        self.min_steps = min_steps
        self.evaluate = evaluate
        self.eval_steps = set(eval_steps)
        self.budget_s = budget_s
        self.eval_times = [budget_s * (j + 1) / evals for j in range(evals)] if evals else []
        self.max_steps = max_steps
        self.curve = []
        self.step_seconds = []
        self.epoch_seconds = []

    def _point(self, train_s):
        start = time.perf_counter()
        scores = self.evaluate()
        self.curve.append({"train_s": train_s, "step": self.step, **scores})
        log(f"    step {self.step}, {train_s:.1f} s: P@1 {scores['P@1']:.4f}")
        return time.perf_counter() - start

    def on_train_begin(self, logs=None):
        self.step = 0
        self.paused = 0.0
        self._point(0.0)
        self.start = self.last = time.perf_counter()

    def train_seconds(self, now=None):
        return (now or time.perf_counter()) - self.start - self.paused

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = self.train_seconds()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(self.train_seconds() - self.epoch_start)

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.step_seconds.append(now - self.last)
        self.step += 1
        train_s = self.train_seconds(now)
        over_budget = self.budget_s is not None and train_s >= self.budget_s
        done = (over_budget and self.step >= self.min_steps) or (
            self.max_steps is not None and self.step >= self.max_steps
        )
        due = self.step in self.eval_steps
        while self.eval_times and train_s >= self.eval_times[0]:
            self.eval_times.pop(0)
            due = True
        if due or (done and self.budget_s is not None):
            self.paused += self._point(train_s)
        if done:
            self.model.stop_training = True
        self.last = time.perf_counter()


# --------------------------------------------------------------------------- one run


def rss_peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rebuilds_per_epoch(steps_per_epoch):
    """Table rebuilds `LSHRebuildCallback(**REBUILD)` makes in the first epoch."""
    return keras_layers.LSHRebuildCallback(**REBUILD).event_index(steps_per_epoch)[0]


def multiplications(method, model, data, active, distinct_rows, rehashed_units):
    """Multiplications per training step (matmuls, forward + backward) and optimizer rows."""
    n = data.feature_ids.size / len(data)
    big_n, h, b = data.num_labels, example.HIDDEN, BATCH
    steps_per_epoch = math.ceil(len(data) / BATCH)
    body = 2 * b * n * h
    out = {"body": body}
    if method == "full_softmax":
        out["output"] = 3 * b * h * big_n
        out["output_rows_updated"] = big_n
    elif method in LSH_METHODS:
        head = model.head
        bits = head.num_tables * head.num_hashes_used
        out["output"] = 3 * b * h * active
        out["query_hashing"] = b * h * bits
        out["table_rebuilds_amortised"] = (
            rehashed_units * (h + 1) * bits * rebuilds_per_epoch(steps_per_epoch) / steps_per_epoch
        )
        out["output_rows_updated"] = distinct_rows
    else:
        out["output"] = 3 * b * h * (model.num_sampled + model.num_true)
        sparse = method.endswith("sparse_adam")
        out["output_rows_updated"] = distinct_rows if sparse else big_n
    out["total"] = sum(v for k, v in out.items() if k != "output_rows_updated")
    return out


def distinct_output_rows(method, model, batch):
    """Distinct output rows one training batch touches (sparse methods)."""
    x, y = batch
    if method in LSH_METHODS:
        ids = model.head.active_ids(model.body(x, training=False), labels=tf.cast(y, tf.int32))
        ids = ids.numpy()
        return int(np.unique(ids[ids >= 0]).size)
    if method.startswith("sampled"):
        true = model.true_classes(y).numpy()
        return int(np.unique(true).size + model.num_sampled)
    return None


def run_method(method, data, cfg, kind, num_tables):
    """Trains `method` on `data` (train, test) per `cfg`; returns its report."""
    train, test = data
    rss_after_data = rss_peak_bytes()
    log(f"{kind} {cfg['shape']}: {method} ...")
    build_start = time.perf_counter()
    model, callbacks = build_model(method, train, cfg["active"], num_tables)
    build_s = time.perf_counter() - build_start
    batches = test_batches(test, cfg.get("test_examples"))
    steps_per_epoch = math.ceil(len(train) / BATCH)
    if kind == "small":
        evals = cfg["evals_per_epoch"]
        eval_steps = {
            round(steps_per_epoch * (e + j / evals))
            for e in range(cfg["epochs"])
            for j in range(1, evals + 1)
        }
        clock = TrainingClock(lambda: precision_at_k(model, batches), eval_steps=eval_steps)
        epochs = cfg["epochs"]
    else:
        clock = TrainingClock(
            lambda: precision_at_k(model, batches),
            budget_s=cfg["budget_s"],
            evals=cfg["evals"],
            min_steps=cfg["min_steps"],
            max_steps=cfg["max_steps"] or steps_per_epoch,
        )
        epochs = 1
    model.fit(
        train.dataset(BATCH, shuffle=True, seed=SEED),
        epochs=epochs,
        verbose=0,
        callbacks=[clock, *callbacks],
    )
    steps = clock.step_seconds[WARMUP_STEPS:] or clock.step_seconds
    median_step = statistics.median(steps)
    rebuild_events = list(callbacks[0].events) if callbacks else []
    rebuild_times = [seconds for _, seconds in rebuild_events]
    rehashed = list(callbacks[0].rehashed_units) if callbacks else []
    if method in LSH_METHODS and not rebuild_events:  # a short run: time one event here
        rebuild_start = time.perf_counter()
        if REBUILD["rehash"] == "changed":
            rehashed.append(int(model.head.refresh_tables()))
        else:
            model.head.rebuild_tables()
            rehashed.append(model.head.units)
        rebuild_times.append(time.perf_counter() - rebuild_start)
    rebuild_mean = statistics.fmean(rebuild_times) if rebuild_times else 0.0
    rehashed_mean = statistics.fmean(rehashed) if rehashed else 0.0
    projected = median_step * steps_per_epoch
    if method in LSH_METHODS:
        projected += rebuilds_per_epoch(steps_per_epoch) * rebuild_mean
    sample = next(iter(train.dataset(BATCH, shuffle=True, seed=SEED + 1)))
    rows = distinct_output_rows(method, model, sample)
    report = {
        "method": method,
        "label": LABELS[method],
        "build_s": build_s,
        "steps": clock.step,
        "train_s": clock.curve[-1]["train_s"] if clock.curve else None,
        "first_step_s": clock.step_seconds[0],
        "median_step_s": median_step,
        "mean_step_s": statistics.fmean(steps),
        "steps_per_epoch": steps_per_epoch,
        "projected_epoch_s": projected,
        "measured_epoch_s": clock.epoch_seconds if kind == "small" else None,
        "curve": clock.curve,
        "final": clock.curve[-1],
        "multiplications_per_step": multiplications(
            method, model, train, cfg["active"], rows, rehashed_mean
        ),
        "rss_after_data_bytes": rss_after_data,
        "peak_rss_bytes": rss_peak_bytes(),
    }
    if method in LSH_METHODS:
        head = model.head
        report["lsh"] = {
            "active": head.num_active,
            "num_tables": head.num_tables,
            "num_hashes": head.num_hashes_used,
            "bucket_capacity": head.bucket_capacity,
            "table_bytes": head.table_bytes,
            "rebuilds_during_training": len(rebuild_events),
            "rebuild_mean_s": rebuild_mean,
            "rebuilds_per_epoch": rebuilds_per_epoch(steps_per_epoch),
            "rehash": REBUILD["rehash"],
            "rehashed_units_mean": rehashed_mean,
        }
    elif method.startswith("sampled"):
        report["sampled"] = {"num_sampled": model.num_sampled, "num_true": model.num_true}
    log(
        f"  {method}: median step {median_step * 1e3:.1f} ms, projected epoch "
        f"{projected:.1f} s, final P@1 {report['final']['P@1']:.4f}"
    )
    return report


def load_data(shape):
    return datasets.synthetic_extreme_classification(shape, seed=SEED)


def run_worker(spec):
    """Entry point of a subprocess: one (shape, method)."""
    _common.configure_threads(spec["threads"])
    data = load_data(spec["cfg"]["shape"])
    report = run_method(spec["method"], data, spec["cfg"], spec["kind"], spec["num_tables"])
    report["popular_labels"] = popular(data, spec["cfg"].get("test_examples"))
    return report


def popular(data, test_examples=None):
    train, test = data
    if test_examples is not None:
        test = test.take(np.arange(min(test_examples, len(test))))
    return {f"P@{k}": test.popular_labels_precision(train, k) for k in TOP_K}


def run_shape(kind, cfg, methods, isolate, args):
    """Runs every method on one data shape; returns the shape's report."""
    log(f"{kind} shape {cfg['shape']}: {datasets.SYNTHETIC_SHAPES[cfg['shape']]}")
    runs = {}
    data = None if isolate else load_data(cfg["shape"])
    for method in methods:
        spec = {
            "kind": kind,
            "cfg": cfg,
            "method": method,
            "threads": args.threads,
            "num_tables": args.num_tables,
        }
        if isolate:
            runs[method] = run_subprocess(spec)
        else:
            runs[method] = run_method(method, data, cfg, kind, args.num_tables)
            runs[method]["popular_labels"] = popular(data, cfg.get("test_examples"))
        gc.collect()
    first = next(iter(runs.values()))
    num_features, num_labels, num_train, num_test = datasets.SYNTHETIC_SHAPES[cfg["shape"]]
    return {
        "shape": cfg["shape"],
        "num_features": num_features,
        "num_labels": num_labels,
        "num_train": num_train,
        "num_test": num_test,
        "settings": cfg,
        "popular_labels": first["popular_labels"],
        "methods": runs,
    }


def run_subprocess(spec):
    result = subprocess.run(  # this script finds the packages itself (_common)
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------- summary


def p1_at(curve, seconds):
    """P@1 after `seconds` of training: linear between the evaluations around it (None past
    the last one)."""
    for before, after in zip(curve, curve[1:], strict=False):
        if before["train_s"] <= seconds <= after["train_s"]:
            span = after["train_s"] - before["train_s"]
            weight = (seconds - before["train_s"]) / span if span > 0 else 1.0
            return before["P@1"] + weight * (after["P@1"] - before["P@1"])
    return curve[-1]["P@1"] if abs(seconds - curve[-1]["train_s"]) < 1e-9 else None


def compare(shape_report, kind):
    runs = shape_report["methods"]
    out = {}
    if "tf_lsh" not in runs:
        return out
    lsh = runs["tf_lsh"]
    for other, run in runs.items():
        if other == "tf_lsh":
            continue
        entry = {
            "speedup_per_step": run["median_step_s"] / lsh["median_step_s"],
            "speedup_per_epoch_projected": run["projected_epoch_s"] / lsh["projected_epoch_s"],
            "multiplications_ratio": lsh["multiplications_per_step"]["total"]
            / run["multiplications_per_step"]["total"],
        }
        if kind == "small":
            entry["speedup_per_epoch_measured"] = statistics.fmean(
                run["measured_epoch_s"]
            ) / statistics.fmean(lsh["measured_epoch_s"])
            entry["p1_ratio_same_epochs"] = lsh["final"]["P@1"] / max(run["final"]["P@1"], 1e-9)
        equal = min(run["curve"][-1]["train_s"], lsh["curve"][-1]["train_s"])
        entry["equal_wall_time_s"] = equal
        entry["p1_at_equal_wall_time"] = {
            "tf_lsh": p1_at(lsh["curve"], equal),
            other: p1_at(run["curve"], equal),
        }
        out[other] = entry
    return out


def targets(report):
    small, large = report["small"], report["large"]
    out = {}
    cmp_small, cmp_large = report["comparisons"]["small"], report["comparisons"]["large"]
    if "full_softmax" in cmp_small and "full_softmax" in cmp_large:
        full_p1 = small["methods"]["full_softmax"]["final"]["P@1"]
        speedup = cmp_large["full_softmax"]["speedup_per_epoch_projected"]
        ratio = cmp_small["full_softmax"]["p1_ratio_same_epochs"]
        out["c_over_a"] = {
            "speedup_per_epoch_large_projected": speedup,
            "speedup_per_epoch_small_measured": cmp_small["full_softmax"][
                "speedup_per_epoch_measured"
            ],
            "p1_ratio_small_same_epochs": ratio,
            "full_softmax_p1_small": full_p1,
            "full_softmax_p1_is_real": full_p1 >= TARGETS["real_full_softmax_p1"],
            "popular_labels_p1_small": small["popular_labels"]["P@1"],
            "target": f">= {TARGETS['speedup_c_over_a']:g}x per epoch (large shape) at >= "
            f"{TARGETS['p1_ratio_c_over_a']:.0%} of its P@1 after the same epochs (small shape)",
            "met": speedup >= TARGETS["speedup_c_over_a"] and ratio >= TARGETS["p1_ratio_c_over_a"],
        }
    for name in ("sampled_20pct", "sampled_3000", "sampled_3000_sparse_adam"):
        entry = {}
        for kind, cmp in (("small", cmp_small), ("large", cmp_large)):
            if name in cmp:
                p = cmp[name]["p1_at_equal_wall_time"]
                entry[kind] = {
                    "seconds": cmp[name]["equal_wall_time_s"],
                    "tf_lsh_p1": p["tf_lsh"],
                    f"{name}_p1": p[name],
                    "met": p["tf_lsh"] is not None
                    and p[name] is not None
                    and p["tf_lsh"] > p[name],
                }
        if entry:
            entry["target"] = "(c) higher P@1 than (b) at equal training wall time"
            out[f"c_over_{name}"] = entry
    del large
    return out


def plot(report, directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, kind in zip(axes, ("small", "large"), strict=True):
        shape = report[kind]
        for run in shape["methods"].values():
            times = [p["train_s"] for p in run["curve"]]
            p1 = [p["P@1"] for p in run["curve"]]
            ax.plot(times, p1, marker="o", markersize=3, label=run["label"])
        ax.axhline(
            shape["popular_labels"]["P@1"], color="gray", linestyle="--", label="popular labels"
        )
        ax.set_xlabel("training wall time (s)")
        ax.set_ylabel("test P@1 (exact inference)")
        ax.set_title(
            f"{shape['shape']}: {shape['num_features']:,} features, {shape['num_labels']:,} labels"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(directory, "bench_extreme_p1_vs_time.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def main(argv=None):
    parser = _common.mode_parser(__doc__.splitlines()[0])
    parser.add_argument("--plots", default="out/plots", help="folder for the PNG plot")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=ALL_METHODS,
        help="methods to run",
    )
    parser.add_argument("--num-tables", type=int, default=16, help="tf-lsh hash tables")
    parser.add_argument("--only", choices=("small", "large"), help="run one shape only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one subprocess run
    args = parser.parse_args(argv)
    if args.worker:
        report = run_worker(json.loads(args.worker))
        sys.stdout.write(json.dumps(report) + "\n")
        return report
    _common.configure_threads(args.threads)
    tf.get_logger().setLevel("ERROR")
    settings = MODES[args.mode]
    start = time.perf_counter()
    report = {
        "benchmark": "extreme",
        "mode": args.mode,
        "machine": {**_common.machine_info(), "load_average_at_start": load_average()},
        "settings": {
            "batch_size": BATCH,
            "learning_rate": LEARNING_RATE,
            "hidden": example.HIDDEN,
            "rebuild": REBUILD,
            "num_tables": args.num_tables,
            "sampled_num_true": "max_labels; -1 padding replaced by the example's first label",
            "sampled_sampler": "uniform_candidate_sampler(unique=True)",
            "rss_isolated": settings["isolate"],
            "methods": args.methods,
        },
    }
    for kind in ("small", "large"):
        if args.only and args.only != kind:
            continue
        report[kind] = run_shape(kind, settings[kind], args.methods, settings["isolate"], args)
    report["comparisons"] = {
        kind: compare(report[kind], kind) for kind in ("small", "large") if kind in report
    }
    if "small" in report and "large" in report:
        report["targets"] = targets(report)
        report["plot"] = plot(report, args.plots)
    report["machine"]["load_average_at_end"] = load_average()
    report["total_wall_s"] = time.perf_counter() - start
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
