"""Benchmark of extreme-classification training: full softmax vs sampled softmax vs tf-lsh.

All methods share one network, SparseInputDense(128, relu) over a bag of words, normalised per
example (`example.build_body`), and an output layer over every label, the same data
(`keras_layers.datasets.synthetic_extreme_classification`, seed 0), batch size 128, learning
rate 1e-3, the same cores and `model.fit`:

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
  tables), the example's `SparseAdam` (`build_optimizer`: no momentum, rowwise feature rows),
  `LSHRebuildCallback(period=50, schedule="exponential", growth=1.2)` as in the example; one
  active set of `active` labels per batch (the batch's labels first, then the units its
  buckets share most), as the example trains.
* optional `tf_lsh_adam` (c''): the same with the optimizer before December 6, `SparseAdam`'s
  defaults (Adam with momentum everywhere).
* optional `tf_lsh_per_example` (c'): the same with one active set per example (SLIDE's way):
  a step then touches up to batch x active output rows.
* optional (`--methods ... sampled_3000_sparse_adam`): (b) with 3,000 samples and `SparseAdam`,
  separating the optimizer's share of the difference from the hashing's.
* optional, the libraries people use instead of a softmax (`benchmarks/xmc_libraries.py`;
  `pip install --no-deps -r benchmarks/requirements.txt`): `pecos_xr_linear` (PECOS
  XR-Linear), `omikuji` (Parabel's partitioned label trees) and `napkinxc_plt` (napkinXC's
  probabilistic label tree). Each trains once, to the end, with its defaults on every core
  (or --threads), on the same training examples; its point is (training seconds, P@k).

Each method is one class registered in `METHODS` under its name (`KerasMethod` for those
trained by `fit`, `LibraryMethod` for the libraries): adding a method is adding a class.

Two data shapes, and optionally a third from files:

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
* `file` (`--data train.txt --test test.txt`, the Extreme Classification Repository format):
  as `small`, for --epochs (default 1 with --quick, 4 with --full), on the first
  --test-examples test examples (default 1,000 with --quick, all with --full).

"At equal wall time" compares P@1 at the shorter of two methods' total training times, each
curve read by linear interpolation between its evaluations (the first, untrained, at the
time the model's build took: a Keras method's training time counts its build, weights drawn
and tables hashed, as a library's train call counts building its model).

Evaluation is always exact: every label is scored (`LSHDense` with `inference="dense"`), top-5
taken, P@k by `keras_layers.PrecisionAtK`; it pauses the training clock. The popular-labels
baseline (`MultiLabelData.popular_labels_precision`) is reported beside P@k. Models are
compiled without training metrics, so steps time training only; the first step (tracing) and
the table rebuilds count in the wall time.

Prediction (`prediction` of each method): after training, the top-5 of every test example of
the evaluation, timed per example (batches of 256 after one traced batch; the libraries in one
call, Omikuji one example a call as its Python API predicts), with its P@k: `dense` (exact)
for the models trained by `fit`, and for tf-lsh also `lsh` (`inference_mode(model, "lsh")`,
`LSHClassifier.predict_top_k`, the tables as training left them, each example its own active
set even for a batch-wide head) and `sketch` (the `active` labels of each example's largest
logits in the head's random sketch of rank `example.INFERENCE_RANK`, then their exact logits);
`tree` for the libraries (their default beam or search).
Each shape's `systems` lists per method the training seconds, final P@1/3/5, prediction
seconds per example and peak RSS; `plot_systems` plots P@1 and P@5 against training time
for every method (curves for those trained by `fit`, points for the libraries).

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
  [--methods NAME ...] [--only small|large|file] [--data TRAIN --test TEST [--epochs N]]
Prints one JSON document to stdout; progress goes to stderr; plots go to --plots.
"""

import argparse
import gc
import importlib.metadata
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

try:
    from benchmarks import xmc_libraries  # noqa: E402
except ModuleNotFoundError:
    import xmc_libraries  # noqa: E402

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
KINDS = ("small", "large", "file")  # the two generated shapes, then --data / --test

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
        "file": {"epochs": 1, "evals_per_epoch": 1, "active": 1000, "test_examples": 1000},
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
        "file": {"epochs": 4, "evals_per_epoch": 2, "active": 3000, "test_examples": None},
    },
}
TARGETS = {"speedup_c_over_a": 20.0, "p1_ratio_c_over_a": 0.97, "real_full_softmax_p1": 0.3}


# ----------------------------------------------------------------------------- models


class SampledSoftmaxClassifier(keras.Model):
    """The same network trained with `tf.nn.sampled_softmax_loss`; `call` gives exact logits."""

    def __init__(self, num_features, num_labels, num_sampled, num_true, **kwargs):
        super().__init__(**kwargs)
        self.body = example.build_body(num_features)
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


# ---------------------------------------------------------------------------- methods

METHODS = {}


def register(cls):
    """Class decorator: `cls()` becomes the method named `cls.name`."""
    METHODS[cls.name] = cls()
    return cls


class Method:
    """One way to learn the labels, by `name` on the command line and `label` in plots."""

    name = label = None

    def check(self):
        """Raises, before any data is made, if the method cannot run here."""

    def run(self, data, cfg, options):
        """Trains on `data` (train, test) per the shape's `cfg`; returns the method's report.

        `options`: {"num_tables": tf-lsh's tables, "threads": cores or None}.
        """
        raise NotImplementedError


class KerasMethod(Method):
    """The benchmark's network trained by `model.fit`, timed and evaluated by `TrainingClock`.

    Subclasses build the model and count what their output layer costs a step.
    """

    def build(self, data, active, num_tables):
        """A compiled model for `data`, and its callbacks."""
        raise NotImplementedError

    def output_costs(self, model, data, active, distinct_rows, rehashed_units):
        """Multiplications of the output layer per step, and `output_rows_updated`."""
        raise NotImplementedError

    def distinct_output_rows(self, model, batch):
        """Distinct output rows one training batch touches (sparse methods), else None."""
        return None

    def table_events(self, model, callbacks):
        """(events during training, seconds of each event, units each re-hashed)."""
        return 0, [], []

    def table_seconds_per_epoch(self, steps_per_epoch, event_mean_s):
        return 0.0

    def details(self, model, events, steps_per_epoch):
        """The report's method-specific part."""
        return {}

    def predictions(self, model, batches):
        """{inference mode: P@k and seconds per example} of top-5 prediction on `batches`."""
        return {"dense": score_top_k(dense_top_k(model), batches)}

    def run(self, data, cfg, options):
        train, test = data
        rss_after_data = rss_peak_bytes()
        log(f"{cfg['shape']}: {self.name} ...")
        build_start = time.perf_counter()
        model, callbacks = self.build(train, cfg["active"], options["num_tables"])
        build_s = time.perf_counter() - build_start
        batches = test_batches(test, cfg.get("test_examples"))
        steps_per_epoch = math.ceil(len(train) / BATCH)
        by_epochs = "epochs" in cfg
        if by_epochs:
            evals = cfg["evals_per_epoch"]
            eval_steps = {
                round(steps_per_epoch * (e + j / evals))
                for e in range(cfg["epochs"])
                for j in range(1, evals + 1)
            }
            clock = TrainingClock(
                precision_at_k(model, batches), eval_steps=eval_steps, setup_s=build_s
            )
            epochs = cfg["epochs"]
        else:
            clock = TrainingClock(
                precision_at_k(model, batches),
                budget_s=cfg["budget_s"],
                evals=cfg["evals"],
                min_steps=cfg["min_steps"],
                max_steps=cfg["max_steps"] or steps_per_epoch,
                setup_s=build_s,
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
        events = self.table_events(model, callbacks)
        _, event_times, rehashed = events
        event_mean = statistics.fmean(event_times) if event_times else 0.0
        rehashed_mean = statistics.fmean(rehashed) if rehashed else 0.0
        projected = median_step * steps_per_epoch
        projected += self.table_seconds_per_epoch(steps_per_epoch, event_mean)
        sample = next(iter(train.dataset(BATCH, shuffle=True, seed=SEED + 1)))
        rows = self.distinct_output_rows(model, sample)
        predictions = self.predictions(model, batches)
        report = {
            "method": self.name,
            "label": self.label,
            "build_s": build_s,
            "steps": clock.step,
            "train_s": clock.curve[-1]["train_s"] if clock.curve else None,
            "first_step_s": clock.step_seconds[0],
            "median_step_s": median_step,
            "mean_step_s": statistics.fmean(steps),
            "steps_per_epoch": steps_per_epoch,
            "projected_epoch_s": projected,
            "measured_epoch_s": clock.epoch_seconds if by_epochs else None,
            "curve": clock.curve,
            "final": clock.curve[-1],
            "multiplications_per_step": multiplications(
                self.output_costs(model, train, cfg["active"], rows, rehashed_mean), train
            ),
            "rss_after_data_bytes": rss_after_data,
            "peak_rss_bytes": rss_peak_bytes(),
            **self.details(model, (*events, event_mean, rehashed_mean), steps_per_epoch),
            "prediction": predictions,
        }
        log(
            f"  {self.name}: median step {median_step * 1e3:.1f} ms, projected epoch "
            f"{projected:.1f} s, final P@1 {report['final']['P@1']:.4f}"
        )
        return report


@register
class FullSoftmax(KerasMethod):
    """(a) A `keras.layers.Dense` output, softmax over all labels, Keras Adam."""

    name = "full_softmax"
    label = "(a) Dense, full softmax + Adam"

    def build(self, data, active, num_tables):
        model = example.build_dense_model(data.num_features, data.num_labels, seed=SEED)
        model.compile(
            optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=example.full_softmax_loss
        )
        return model, []

    def output_costs(self, model, data, active, distinct_rows, rehashed_units):
        return {
            "output": 3 * BATCH * example.HIDDEN * data.num_labels,
            "output_rows_updated": data.num_labels,
        }


class SampledSoftmax(KerasMethod):
    """(b) `tf.nn.sampled_softmax_loss` over `num_sampled` labels a batch, Keras Adam."""

    sparse_adam = False

    def num_sampled(self, num_labels):
        raise NotImplementedError

    def build(self, data, active, num_tables):
        keras.utils.set_random_seed(SEED)
        model = SampledSoftmaxClassifier(
            data.num_features, data.num_labels, self.num_sampled(data.num_labels), data.max_labels
        )
        model.build((None, data.num_features))
        optimizer = (
            keras_layers.SparseAdam(LEARNING_RATE)
            if self.sparse_adam
            else keras.optimizers.Adam(LEARNING_RATE)
        )
        model.compile(optimizer=optimizer)
        return model, []

    def output_costs(self, model, data, active, distinct_rows, rehashed_units):
        return {
            "output": 3 * BATCH * example.HIDDEN * (model.num_sampled + model.num_true),
            "output_rows_updated": distinct_rows if self.sparse_adam else data.num_labels,
        }

    def distinct_output_rows(self, model, batch):
        _, y = batch
        true = model.true_classes(y).numpy()
        return int(np.unique(true).size + model.num_sampled)

    def details(self, model, events, steps_per_epoch):
        return {"sampled": {"num_sampled": model.num_sampled, "num_true": model.num_true}}


@register
class SampledFraction(SampledSoftmax):
    name = "sampled_20pct"
    label = "(b) sampled softmax, 20% + Adam"

    def num_sampled(self, num_labels):
        return max(1, round(SAMPLED_FRACTION * num_labels))


@register
class SampledFixed(SampledSoftmax):
    name = "sampled_3000"
    label = "(b) sampled softmax, 3000 + Adam"

    def num_sampled(self, num_labels):
        return min(SAMPLED_FIXED, num_labels - 1)


@register
class SampledFixedSparseAdam(SampledFixed):
    """(b') The same with `SparseAdam`: the optimizer's share of the difference to tf-lsh."""

    name = "sampled_3000_sparse_adam"
    label = "(b') sampled softmax, 3000 + SparseAdam"
    sparse_adam = True


@register
class TfLsh(KerasMethod):
    """(c) `LSHClassifier` with an `LSHDense` output, `SparseAdam`, `LSHRebuildCallback`; one
    active set a batch."""

    name = "tf_lsh"
    label = "(c) tf-lsh: LSHDense + SparseAdam (no momentum, rowwise feature rows)"
    batch_wide = True

    def optimizer(self):
        return example.build_optimizer(LEARNING_RATE)

    def build(self, data, active, num_tables):
        model = example.build_lsh_model(
            data.num_features,
            data.num_labels,
            active,
            labels_per_example=data.labels_per_example,
            num_tables=num_tables,
            batch_wide=self.batch_wide,
            seed=SEED,
        )
        model.compile(optimizer=self.optimizer())
        return model, [keras_layers.LSHRebuildCallback(**REBUILD)]

    def output_costs(self, model, data, active, distinct_rows, rehashed_units):
        head, h = model.head, example.HIDDEN
        bits = head.table_config.num_tables * head.tables.num_hashes
        steps_per_epoch = math.ceil(len(data) / BATCH)
        return {
            "output": 3 * BATCH * h * active,
            "query_hashing": BATCH * h * bits,
            "table_rebuilds_amortised": rehashed_units
            * (h + 1)
            * bits
            * rebuilds_per_epoch(steps_per_epoch)
            / steps_per_epoch,
            "output_rows_updated": distinct_rows,
        }

    def distinct_output_rows(self, model, batch):
        x, y = batch
        ids = model.head.active_ids(model.body(x, training=False), labels=tf.cast(y, tf.int32))
        ids = ids.numpy()
        return int(np.unique(ids[ids >= 0]).size)

    def table_events(self, model, callbacks):
        rebuild = callbacks[0]
        times = [seconds for _, seconds in rebuild.events]
        rehashed = list(rebuild.rehashed_units)
        if not times:  # a short run: time one event here
            start = time.perf_counter()
            if REBUILD["rehash"] == "changed":
                rehashed.append(int(model.head.tables.refresh()))
            else:
                model.head.tables.rebuild()
                rehashed.append(model.head.units)
            times.append(time.perf_counter() - start)
        return len(rebuild.events), times, rehashed

    def table_seconds_per_epoch(self, steps_per_epoch, event_mean_s):
        return rebuilds_per_epoch(steps_per_epoch) * event_mean_s

    def details(self, model, events, steps_per_epoch):
        during_training, _, _, event_mean, rehashed_mean = events
        head = model.head
        return {
            "lsh": {
                "active": head.num_active,
                "num_tables": head.table_config.num_tables,
                "num_hashes": head.tables.num_hashes,
                "bucket_capacity": head.table_config.bucket_capacity,
                "table_bytes": head.selector.memory_bytes,
                "rebuilds_during_training": during_training,
                "rebuild_mean_s": event_mean,
                "rebuilds_per_epoch": rebuilds_per_epoch(steps_per_epoch),
                "rehash": REBUILD["rehash"],
                "rehashed_units_mean": rehashed_mean,
            }
        }

    def predictions(self, model, batches):
        # The tables as training left them (a full rebuild here retrieved worse on the small
        # shape: per-example P@1 0.22 against 0.31 after two epochs).
        # LSH inference chooses each example's labels, even for a batch-wide head.
        modes = ("dense", "lsh", "sketch")
        return {mode: self.scored_top_k(model, batches, mode) for mode in modes}

    @staticmethod
    def scored_top_k(model, batches, mode):
        """`score_top_k` of `model.predict_top_k` in inference `mode`."""
        with keras_layers.inference_mode(model, mode):
            return score_top_k(lambda x: model.predict_top_k(x, max(TOP_K))[0], batches)


@register
class TfLshAdam(TfLsh):
    """(c'') tf-lsh with `SparseAdam`'s defaults, the optimizer before December 6: what the
    example's optimizer adds."""

    name = "tf_lsh_adam"
    label = "(c'') tf-lsh, Adam with momentum everywhere"

    def optimizer(self):
        return keras_layers.SparseAdam(LEARNING_RATE)


@register
class TfLshPerExample(TfLsh):
    """(c') The same with one active set per example (SLIDE's way)."""

    name = "tf_lsh_per_example"
    label = "(c') tf-lsh, one active set per example"
    batch_wide = False


class LibraryMethod(Method):
    """A library of `xmc_libraries`, trained to the end with its defaults on every core (or
    --threads), then its top-5 predicted for the test examples in one pass."""

    def __init__(self, library):
        self.library = library
        self.name, self.label = library.name, library.label

    def check(self):
        self.library.load()

    def run(self, data, cfg, options):
        train, test = data
        rss_after_data = rss_peak_bytes()
        threads = options["threads"] or os.cpu_count()
        log(f"{cfg['shape']}: {self.name} ...")
        start = time.perf_counter()
        model = self.library.train(train, threads)
        train_s = time.perf_counter() - start
        test = test_subset(test, cfg.get("test_examples"))
        start = time.perf_counter()
        top = self.library.predict_top_k(model, test, max(TOP_K), threads)
        predict_s = time.perf_counter() - start
        _, labels = next(iter(test.dataset(len(test))))
        scores = precision_scores([(labels, top)])
        point = {"train_s": train_s, "step": None, **scores}
        log(f"  {self.name}: trained in {train_s:.1f} s, P@1 {scores['P@1']:.4f}")
        return {
            "method": self.name,
            "label": self.label,
            "library": f"{self.library.package} {importlib.metadata.version(self.library.package)}",
            "threads": threads,
            "train_s": train_s,
            "curve": [point],
            "final": point,
            "rss_after_data_bytes": rss_after_data,
            "peak_rss_bytes": rss_peak_bytes(),
            "prediction": {
                "tree": {**scores, "s_per_example": predict_s / len(test), "examples": len(test)}
            },
        }


for _library in xmc_libraries.LIBRARIES.values():
    METHODS[_library.name] = LibraryMethod(_library)


# ------------------------------------------------------------------------ evaluation


def test_subset(test, count=None):
    return test if count is None else test.take(np.arange(min(count, len(test))))


def test_batches(test, count=None):
    return [(x, y.numpy()) for x, y in test_subset(test, count).dataset(EVAL_BATCH)]


def precision_scores(pairs):
    """P@1/3/5 over (labels, top-5 ids) pairs."""
    metrics = {k: keras_layers.PrecisionAtK(k) for k in TOP_K}
    for labels, top in pairs:
        for metric in metrics.values():
            metric.update_state(labels, top)
    return {f"P@{k}": float(metric.result()) for k, metric in metrics.items()}


def dense_top_k(model):
    """x -> its top-5 label ids, every label scored."""
    return lambda x: tf.math.top_k(model(x, training=False), max(TOP_K)).indices


def timed_top_k(top_k, batches):
    """`(tops, seconds per example)`: `top_k` (x -> top-5 ids, traced) of each of `batches`,
    timed after the first batch is run once, to trace."""
    top_k = tf.function(top_k, reduce_retracing=True)
    _common.materialise(top_k(batches[0][0]))
    seconds, tops = 0.0, []
    for x, _ in batches:
        start = time.perf_counter()
        tops.append(_common.materialise(top_k(x)))
        seconds += time.perf_counter() - start
    return tops, seconds / sum(len(y) for _, y in batches)


def score_top_k(top_k, batches):
    """P@1/3/5 of `top_k` (x -> top-5 ids) over `batches`, and its seconds per example
    (`timed_top_k`)."""
    tops, seconds = timed_top_k(top_k, batches)
    scores = precision_scores((y, top) for (_, y), top in zip(batches, tops, strict=True))
    examples = sum(len(y) for _, y in batches)
    return {**scores, "s_per_example": seconds, "examples": examples}


def precision_at_k(model, batches):
    """A function () -> exact P@1/3/5 of `model` over `batches` (every label scored), traced
    once for every evaluation of a run (a `tf.function` per evaluation retraced each time)."""
    top_k = tf.function(dense_top_k(model), reduce_retracing=True)
    return lambda: precision_scores((y, top_k(x)) for x, y in batches)


class TrainingClock(keras.callbacks.Callback):
    """Times each step, evaluates at chosen steps or training times, stops at a budget.

    Evaluation pauses the clock: `curve` holds (training seconds, step, P@k) points. Training
    seconds start from `setup_s`, the model's build, which the libraries' training time holds
    too (their train call builds their model).
    """

    def __init__(
        self,
        evaluate,
        eval_steps=(),
        budget_s=None,
        evals=0,
        min_steps=0,
        max_steps=None,
        setup_s=0.0,
    ):
        super().__init__()
        self.setup_s = setup_s
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
        self._point(self.setup_s)
        self.start = self.last = time.perf_counter()

    def train_seconds(self, now=None):
        return (now or time.perf_counter()) - self.start - self.paused + self.setup_s

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


def multiplications(output_costs, data):
    """Multiplications per training step (matmuls, forward + backward) and optimizer rows:
    the body's, then the output layer's (`output_costs`)."""
    n = data.feature_ids.size / len(data)
    out = {"body": 2 * BATCH * n * example.HIDDEN, **output_costs}
    out["total"] = sum(v for k, v in out.items() if k != "output_rows_updated")
    return out


def load_data(cfg):
    """(train, test) of a shape's settings: generated, or read from the files it names."""
    if "train_path" not in cfg:
        return datasets.synthetic_extreme_classification(cfg["shape"], seed=SEED)
    train, test = (
        datasets.read_extreme_classification(cfg[f"{s}_path"]) for s in ("train", "test")
    )
    if (train.num_features, train.num_labels) != (test.num_features, test.num_labels):
        raise ValueError(
            f"bench_extreme: --data {cfg['train_path']} has {train.num_features} features and "
            f"{train.num_labels} labels, --test {cfg['test_path']} {test.num_features} and "
            f"{test.num_labels}"
        )
    return train, test


def data_dims(cfg):
    """(num_features, num_labels, num_train, num_test) without reading the data."""
    if "train_path" not in cfg:
        return datasets.SYNTHETIC_SHAPES[cfg["shape"]]
    headers = []
    for split in ("train", "test"):
        with open(cfg[f"{split}_path"]) as f:
            headers.append([int(x) for x in f.readline().split()])
    (num_train, num_features, num_labels), (num_test, _, _) = headers
    return num_features, num_labels, num_train, num_test


def file_settings(args, cfg):
    """The settings of a run on --data / --test files: the mode's, with the command's
    --epochs and --test-examples, and at most one active unit per label."""
    cfg = dict(cfg, shape=os.path.basename(args.data), train_path=args.data, test_path=args.test)
    cfg["active"] = min(cfg["active"], data_dims(cfg)[1])
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
    if args.test_examples is not None:
        cfg["test_examples"] = args.test_examples
    return cfg


def run_worker(spec):
    """Entry point of a subprocess: one (shape, method)."""
    _common.configure_threads(spec["threads"])
    data = load_data(spec["cfg"])
    report = METHODS[spec["method"]].run(data, spec["cfg"], spec)
    report["popular_labels"] = popular(data, spec["cfg"].get("test_examples"))
    return report


def popular(data, test_examples=None):
    train, test = data
    test = test_subset(test, test_examples)
    return {f"P@{k}": test.popular_labels_precision(train, k) for k in TOP_K}


def run_shape(kind, cfg, methods, isolate, args):
    """Runs every method on one data shape; returns the shape's report."""
    num_features, num_labels, num_train, num_test = data_dims(cfg)
    log(f"{kind} shape {cfg['shape']}: {(num_features, num_labels, num_train, num_test)}")
    runs, failed = {}, []
    data = None if isolate else load_data(cfg)
    for method in methods:
        spec = {
            "kind": kind,
            "cfg": cfg,
            "method": method,
            "threads": args.threads,
            "num_tables": args.num_tables,
        }
        if isolate:
            run = run_subprocess(spec)
            if run is None:  # e.g. out of memory: the others still run and are reported
                log(f"  {method}: its worker failed (traceback above); left out")
                failed.append(method)
                continue
            runs[method] = run
        else:
            runs[method] = METHODS[method].run(data, cfg, spec)
            runs[method]["popular_labels"] = popular(data, cfg.get("test_examples"))
        gc.collect()
    if not runs:
        raise RuntimeError(f"bench_extreme: every method failed on the {kind} shape: {failed}")
    first = next(iter(runs.values()))
    report = {
        "shape": cfg["shape"],
        "num_features": num_features,
        "num_labels": num_labels,
        "num_train": num_train,
        "num_test": num_test,
        "settings": cfg,
        "popular_labels": first["popular_labels"],
        "methods": runs,
        "failed_methods": failed,
    }
    report["systems"] = systems(report)
    return report


def run_subprocess(spec):
    """The worker's report, or None if it failed (its traceback goes to this stderr)."""
    result = subprocess.run(  # this script finds the packages itself (_common)
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
        stdout=subprocess.PIPE,
        check=False,
        text=True,
    )
    if result.returncode != 0:
        return None
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


def compare(shape_report):
    """tf-lsh against each other method trained by `fit`."""
    runs = shape_report["methods"]
    out = {}
    if "tf_lsh" not in runs:
        return out
    lsh = runs["tf_lsh"]
    for other, run in runs.items():
        if other == "tf_lsh" or not isinstance(METHODS[other], KerasMethod):
            continue
        entry = {
            "speedup_per_step": run["median_step_s"] / lsh["median_step_s"],
            "speedup_per_epoch_projected": run["projected_epoch_s"] / lsh["projected_epoch_s"],
            "multiplications_ratio": lsh["multiplications_per_step"]["total"]
            / run["multiplications_per_step"]["total"],
        }
        if "epochs" in shape_report["settings"]:
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


def systems(shape_report):
    """Per method: training seconds, P@1/3/5 at the end, top-5 prediction seconds per test
    example for each inference mode, peak RSS."""
    out = {}
    for name, run in shape_report["methods"].items():
        out[name] = {
            "train_s": run["final"]["train_s"],
            **{f"P@{k}": run["final"][f"P@{k}"] for k in TOP_K},
            "predict_s_per_example": {
                mode: scores["s_per_example"] for mode, scores in run["prediction"].items()
            },
            "peak_rss_bytes": run["peak_rss_bytes"],
        }
        if "steps" in run:  # trained by fit: maybe not to the end of its epochs
            out[name]["epochs_trained"] = run["steps"] / run["steps_per_epoch"]
        for mode, scores in run["prediction"].items():
            if mode not in ("dense", "tree"):  # P@k of the inexact inference modes
                out[name][f"{mode}_inference"] = {f"P@{k}": scores[f"P@{k}"] for k in TOP_K}
    return out


def draw_curves(ax, shape, k, ylabel):
    """P@k against training time of every method on `shape`: curves for those trained by
    `fit`, points for the libraries (trained once, to the end); the popular-labels baseline."""
    for run in shape["methods"].values():
        times = [p["train_s"] for p in run["curve"]]
        scores = [p[f"P@{k}"] for p in run["curve"]]
        if isinstance(METHODS[run["method"]], KerasMethod):
            ax.plot(times, scores, marker="o", markersize=3, label=run["label"])
        else:
            ax.plot(times, scores, marker="*", markersize=12, linestyle="", label=run["label"])
    ax.axhline(
        shape["popular_labels"][f"P@{k}"], color="gray", linestyle="--", label="popular labels"
    )
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(
        f"{shape['shape']}: {shape['num_features']:,} features, {shape['num_labels']:,} labels"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def save_figure(fig, directory, name):
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    fig.tight_layout()
    path = os.path.join(directory, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def subplots(rows, columns, size):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, columns, figsize=size, squeeze=False)


def plot_systems(report, kinds, directory):
    """P@1 and P@5 against training time, every method, a column per shape."""
    fig, axes = subplots(2, len(kinds), (6.5 * len(kinds), 8.5))
    for column, kind in enumerate(kinds):
        for row, k in enumerate((1, 5)):
            draw_curves(axes[row][column], report[kind], k, f"test P@{k}")
    return save_figure(fig, directory, "bench_extreme_systems.png")


def plot(report, directory):
    fig, axes = subplots(1, 2, (13, 4.8))
    for ax, kind in zip(axes[0], ("small", "large"), strict=True):
        draw_curves(ax, report[kind], 1, "test P@1 (exact inference)")
    return save_figure(fig, directory, "bench_extreme_p1_vs_time.png")


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
        choices=list(METHODS),
        help="methods to run (the libraries' need benchmarks/requirements.txt)",
    )
    parser.add_argument("--num-tables", type=int, default=16, help="tf-lsh hash tables")
    parser.add_argument("--only", choices=KINDS, help="run one shape only")
    parser.add_argument(
        "--data", help="also run on this training file (Extreme Classification Repository format)"
    )
    parser.add_argument("--test", help="the test file that goes with --data")
    parser.add_argument(
        "--epochs", type=int, help="epochs on the small shape and on --data (default: the mode's)"
    )
    parser.add_argument(
        "--test-examples", type=int, help="evaluate on the first N of --test (default: the mode's)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one subprocess run
    args = parser.parse_args(argv)
    if args.worker:
        report = run_worker(json.loads(args.worker))
        sys.stdout.write(json.dumps(report) + "\n")
        return report
    if (args.data is None) != (args.test is None):
        parser.error("--data and --test go together")
    if args.only == "file" and args.data is None:
        parser.error("--only file needs --data and --test")
    for method in args.methods:
        try:
            METHODS[method].check()
        except ModuleNotFoundError as error:
            parser.error(str(error))
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
    for kind in KINDS:
        if (args.only and args.only != kind) or (kind == "file" and args.data is None):
            continue
        cfg = file_settings(args, settings[kind]) if kind == "file" else dict(settings[kind])
        if kind == "small" and args.epochs is not None:
            cfg["epochs"] = args.epochs
        report[kind] = run_shape(kind, cfg, args.methods, settings["isolate"], args)
    kinds = [kind for kind in KINDS if kind in report]
    report["comparisons"] = {kind: compare(report[kind]) for kind in kinds}
    if "small" in report and "large" in report:
        report["targets"] = targets(report)
        report["plot"] = plot(report, args.plots)
    if kinds:
        report["plot_systems"] = plot_systems(report, kinds, args.plots)
    report["machine"]["load_average_at_end"] = load_average()
    report["total_wall_s"] = time.perf_counter() - start
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
